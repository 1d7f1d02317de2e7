"""The JSON API under ``/api/`` (documented at /openapi.json): what the pages show, for
scripts and for the overview's live refresh."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from ingest.console import schemas
from ingest.console.forms import MAX_OFFSET
from ingest.console.operations import Action, Target
from ingest.console.service import Console, operation_view
from ingest.deadletter import DeadLetterFilter

from ._request import ConsoleDep, actor
from .actions import ACTION_WAIT

_FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {
        "model": schemas.Problem,
        "description": "Cross-site request, missing or wrong CSRF token, or read-only console.",
    }
}
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": schemas.Problem, "description": "INGEST_CONSOLE_TOKEN is set and missing."}
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": schemas.Problem, "description": "No such thing."}
}
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": schemas.Problem, "description": "Redis cannot be reached."}
}
_ACTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_FORBIDDEN,
    400: {"model": schemas.Problem, "description": "Nothing chosen, or chosen twice."},
}

router = APIRouter(prefix="/api", responses={**_UNAUTHORIZED, **_UNAVAILABLE})


def _to_filter(selection: schemas.Selection) -> DeadLetterFilter:
    return DeadLetterFilter(
        reasons=frozenset(selection.reasons),
        statuses=frozenset(selection.statuses),
        websites=frozenset(selection.websites),
        ids=frozenset(selection.ids),
        transaction_contains=selection.search or None,
        since=schemas.as_unix(selection.since),
        until=schemas.as_unix(selection.until),
    )


def _selection_query(
    reason: Annotated[list[schemas.Reason] | None, Query(max_length=2)] = None,
    status: Annotated[list[schemas.Status] | None, Query(max_length=50)] = None,
    website: Annotated[list[schemas.Text] | None, Query(max_length=50)] = None,
    id: Annotated[
        list[schemas.Text] | None,
        Query(max_length=500, description="Dead-letter id or transaction id."),
    ] = None,
    q: Annotated[
        str | None, Query(max_length=255, description="Transaction id contains this text.")
    ] = None,
    since: Annotated[datetime | None, Query(description="Died at or after (ISO 8601).")] = None,
    until: Annotated[datetime | None, Query(description="Died at or before (ISO 8601).")] = None,
) -> schemas.Selection:
    try:
        return schemas.Selection(
            reasons=reason or [],
            statuses=status or [],
            websites=website or [],
            ids=id or [],
            search=q or None,
            since=since,
            until=until,
        )
    except ValidationError as exc:
        # The same 422 shape FastAPI gives for its own parameters (documented in the schema).
        errors = exc.errors(include_url=False, include_context=False)
        raise RequestValidationError(
            [{**error, "loc": ("query", *error["loc"])} for error in errors]
        ) from exc


def _api_target(body: schemas.ActionRequest) -> Target:
    if body.ids and body.selection is not None:
        raise HTTPException(400, "choose dead letters by selection or by ids, not both")
    if body.ids:
        return Target(ids=tuple(body.ids))
    selection = _to_filter(body.selection) if body.selection is not None else DeadLetterFilter()
    if selection.is_empty and not body.all:
        raise HTTPException(400, "choose what to act on: a selection, ids, or all=true")
    return Target(selection=selection)


def _act(
    console: Console, action: Action, body: schemas.ActionRequest, request: Request
) -> schemas.ActionResult:
    target = _api_target(body)
    if not body.confirm:
        preview = console.preview(action, target, as_of=body.as_of)
        return schemas.ActionResult(dry_run=True, preview=preview)
    operation = console.start(action, target, as_of=body.as_of, actor=actor(request))
    operation = console.operations.wait(operation.id, ACTION_WAIT) or operation
    return schemas.ActionResult(dry_run=False, operation=operation_view(operation))


@router.get("/session", tags=["session"])
def session(request: Request, console: ConsoleDep) -> schemas.Session:
    """This browser's CSRF token, and what this console allows."""
    return schemas.Session(
        csrf_token=request.state.csrf_token,
        read_only=console.options.read_only,
        token_required=console.options.token_value is not None,
    )


@router.get("/overview", tags=["overview"])
def overview(console: ConsoleDep) -> schemas.Overview:
    """The accounting identity with each figure, rates, oldest age, workers, pauses."""
    return console.overview()


@router.get("/dead-letters", tags=["dead letters"])
def dead_letters(
    console: ConsoleDep,
    selection: Annotated[schemas.Selection, Depends(_selection_query)],
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    counts: bool = True,
) -> schemas.DeadLetterPage:
    """Newest first, filtered; ``counts`` adds the counts per reason of the store."""
    return console.dead_letters(
        _to_filter(selection), offset=offset, limit=limit, with_counts=counts
    )


@router.get("/dead-letters/{dead_id:path}", tags=["dead letters"], responses=_NOT_FOUND)
def dead_letter(dead_id: str, console: ConsoleDep) -> schemas.DeadLetterDetail:
    """One dead letter (by id, or by transaction id when unambiguous), masked."""
    return console.dead_letter(dead_id)


@router.post(
    "/dead-letters/{dead_id:path}/reveal",
    tags=["dead letters"],
    responses={**_NOT_FOUND, **_FORBIDDEN},
)
def reveal(dead_id: str, request: Request, console: ConsoleDep) -> schemas.DeadLetterDetail:
    """The same, with emails and names shown. Logged."""
    return console.dead_letter(dead_id, reveal=True, actor=actor(request))


@router.post("/replay", tags=["actions"], responses=_ACTION_RESPONSES)
def replay(
    body: Annotated[schemas.ActionRequest, Body()], request: Request, console: ConsoleDep
) -> schemas.ActionResult:
    """Dry run (default) or, with ``confirm``, put dead letters back on the queue:
    the same idempotent, rate-limited replay as ``ingest dlq replay``."""
    return _act(console, "replay", body, request)


@router.post("/purge", tags=["actions"], responses=_ACTION_RESPONSES)
def purge(
    body: Annotated[schemas.ActionRequest, Body()], request: Request, console: ConsoleDep
) -> schemas.ActionResult:
    """Dry run (default) or, with ``confirm``, delete dead letters for good."""
    return _act(console, "purge", body, request)


@router.get("/operations/{operation_id}", tags=["actions"], responses=_NOT_FOUND)
def operation(operation_id: str, console: ConsoleDep) -> schemas.Operation:
    """A replay or purge started here: progress, then how many were requeued."""
    found = console.operations.get(operation_id)
    if found is None:
        raise HTTPException(404, "no such operation (this console keeps the last 100)")
    return operation_view(found)


@router.get("/paused", tags=["paused websites"])
def paused(console: ConsoleDep) -> list[schemas.PausedWebsite]:
    """Websites paused after a 401/403: why, since when, last probe, parked events."""
    return console.paused()


@router.post("/paused/probe", tags=["paused websites"], responses={**_NOT_FOUND, **_FORBIDDEN})
def probe(
    website: Annotated[str, Body(embed=True, max_length=255)],
    request: Request,
    console: ConsoleDep,
) -> schemas.ProbeResult:
    """Ask the workers to probe this website at their next housekeeping."""
    if not console.request_probe(website, actor=actor(request)):
        raise HTTPException(404, "that website is not paused")
    return schemas.ProbeResult(website=website, requested=True)
