"""The paused-websites page, and asking the workers to probe one now."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ingest.console.rendering import page_router, render

from ._request import ConsoleDep, actor, form_fields

router = page_router()


@router.get("/paused")
def paused(request: Request, console: ConsoleDep) -> HTMLResponse:
    probed = request.query_params.get("probed")
    return render(request, "paused.html", active="paused", sites=console.paused(), probed=probed)


@router.post("/paused/probe", response_model=None)
async def probe(request: Request, console: ConsoleDep) -> Response:
    website = ((await form_fields(request)).get("website") or [""])[0]
    requested = await run_in_threadpool(
        lambda: console.request_probe(website, actor=actor(request))
    )
    if not requested:
        return render(
            request,
            "error.html",
            status=404,
            detail="That website is not paused (any more).",
        )
    return RedirectResponse(f"/paused?{urlencode({'probed': website})}", status_code=303)
