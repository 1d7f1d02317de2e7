"""``GET /``: the pipeline at a glance (the page refreshes its figures from /api/overview)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse

from ingest.console.charts import overview_charts
from ingest.console.rendering import page_router, render

from ._request import ConsoleDep

LIVE_INTERVAL_MS = 2000

router = page_router()


@router.get("/")
def overview(request: Request, console: ConsoleDep) -> HTMLResponse:
    return render(
        request,
        "overview.html",
        active="overview",
        ov=console.overview(),
        live_interval=LIVE_INTERVAL_MS,
        charts=overview_charts(console.connection, console.keys, now=request.app.state.clock()),
    )
