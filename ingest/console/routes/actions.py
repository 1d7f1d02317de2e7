"""Replay and purge: a dry-run page (GET), the confirmed action (POST), and the page of
the operation it started.

Nothing changes without a POST that carries ``confirm=yes`` (and ``all=1`` for every
dead letter); the confirmation passes the dry run's ``as_of`` on, so letters that died
after the operator looked are left alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ingest.console.forms import FilterForm, resolved_params
from ingest.console.operations import Action
from ingest.console.rendering import page_router, render
from ingest.console.service import Console, operation_view

from ._request import ClockDep, ConsoleDep, actor, form_fields, query_form

ACTION_WAIT = 3.0  # seconds a confirmation waits for a small action to finish
MAX_AS_OF = 1e11  # unix seconds (year 5138): the API's bound too

router = page_router()


def _preview_page(
    request: Request,
    console: Console,
    clock: Callable[[], float],
    action: Action,
    form: FilterForm,
    *,
    status: int = 200,
    error: str | None = None,
) -> HTMLResponse:
    options = console.options
    if options.read_only:
        return render(request, "error.html", status=403, detail="This console is read-only.")
    target = form.target(clock())
    everything = target.selection is not None and target.selection.is_empty
    preview = None if form.errors else console.preview(action, target)
    hidden: list[tuple[str, str]] = []
    if preview is not None:
        if target.selection is None:
            hidden = [("id", i) for i in dict.fromkeys(target.ids)]
        else:
            hidden = resolved_params(target.selection)
            if everything:
                hidden.append(("all", "1"))
        hidden.append(("as_of", repr(preview.as_of)))
    return render(
        request,
        "preview.html",
        status=status,
        active="dead-letters",
        action=action,
        form=form,
        preview=preview,
        everything=everything,
        hidden=hidden,
        error=error,
        rate=options.replay_rate,
        back=f"/dead-letters?{form.query()}" if not form.ids else "/dead-letters",
    )


async def _confirm(
    request: Request, console: Console, clock: Callable[[], float], action: Action
) -> Response:
    fields = await form_fields(request)
    form = FilterForm.parse(fields)

    async def refuse(error: str | None = None) -> Response:
        # The dry-run page again, with why nothing was done.
        return await run_in_threadpool(
            lambda: _preview_page(request, console, clock, action, form, status=400, error=error)
        )

    if (fields.get("confirm") or [""])[0] != "yes":
        return await refuse("Nothing was changed: this needs your confirmation.")
    target = form.target(clock())
    if form.errors:
        return await refuse()
    if (
        target.selection is not None
        and target.selection.is_empty
        and (fields.get("all") or [""])[0] != "1"
    ):
        return await refuse(
            "Nothing was changed: acting on every dead letter needs its own confirmation."
        )
    try:
        as_of = _as_of((fields.get("as_of") or [""])[0])
    except ValueError:
        return await refuse("Nothing was changed: the dry run's time (as_of) is not a time.")

    def start() -> str:
        operation = console.start(action, target, as_of=as_of, actor=actor(request))
        console.operations.wait(operation.id, ACTION_WAIT)
        return operation.id

    operation_id = await run_in_threadpool(start)
    return RedirectResponse(f"/operations/{quote(operation_id)}", status_code=303)


def _as_of(value: str) -> float | None:
    """The dry run's moment from a confirmation: None when absent (act as of now), else a
    unix time; ValueError for anything else (nan, inf, a negative or far-future time)."""
    if not value.strip():
        return None
    moment = float(value)
    if not (math.isfinite(moment) and 0 <= moment <= MAX_AS_OF):
        raise ValueError(f"not a time: {value!r}")
    return moment


@router.get("/replay")
def replay_preview(request: Request, console: ConsoleDep, clock: ClockDep) -> HTMLResponse:
    return _preview_page(request, console, clock, "replay", query_form(request))


@router.get("/purge")
def purge_preview(request: Request, console: ConsoleDep, clock: ClockDep) -> HTMLResponse:
    return _preview_page(request, console, clock, "purge", query_form(request))


@router.post("/replay", response_model=None)
async def replay(request: Request, console: ConsoleDep, clock: ClockDep) -> Response:
    return await _confirm(request, console, clock, "replay")


@router.post("/purge", response_model=None)
async def purge(request: Request, console: ConsoleDep, clock: ClockDep) -> Response:
    return await _confirm(request, console, clock, "purge")


@router.get("/operations/{operation_id}")
def operation(request: Request, operation_id: str, console: ConsoleDep) -> HTMLResponse:
    found = console.operations.get(operation_id)
    if found is None:
        return render(
            request,
            "error.html",
            status=404,
            detail="No such operation (this console keeps the last 100).",
        )
    return render(request, "operation.html", active="dead-letters", op=operation_view(found))
