"""The dead-letter pages: the filtered list, one letter, and one letter revealed."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from ingest.console.forms import PAGE_SIZES, WINDOW_LABELS
from ingest.console.rendering import page_router, render
from ingest.deadletter import DeadLetterFilter

from ._request import ClockDep, ConsoleDep, actor, query_form

router = page_router()


@router.get("/dead-letters")
def dead_letters(request: Request, console: ConsoleDep, clock: ClockDep) -> HTMLResponse:
    form = query_form(request)
    selection = form.selection(clock())
    if form.ids:
        selection = DeadLetterFilter(ids=frozenset(form.ids))
    page = console.dead_letters(selection, offset=form.offset, limit=form.limit)
    last_offset = max(0, (page.matched - 1) // form.limit * form.limit)
    return render(
        request,
        "dead_letters.html",
        active="dead-letters",
        form=form,
        page=page,
        last_offset=last_offset,
        page_sizes=PAGE_SIZES,
        windows=WINDOW_LABELS,
    )


@router.get("/dead-letters/{dead_id:path}")
def dead_letter(request: Request, dead_id: str, console: ConsoleDep) -> HTMLResponse:
    return render(
        request, "dead_letter.html", active="dead-letters", letter=console.dead_letter(dead_id)
    )


@router.post("/dead-letters/{dead_id:path}/reveal")
async def reveal(request: Request, dead_id: str, console: ConsoleDep) -> HTMLResponse:
    letter = await run_in_threadpool(
        lambda: console.dead_letter(dead_id, reveal=True, actor=actor(request))
    )
    return render(request, "dead_letter.html", active="dead-letters", letter=letter)
