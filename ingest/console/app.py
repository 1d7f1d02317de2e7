"""The console's ASGI app: server-rendered pages, and the JSON API under /api/ behind them.

:func:`create_app` builds it from the package's :class:`~ingest.settings.Settings`. Every
request passes :class:`~ingest.console.security.ConsoleGuard` first (token, CSRF, origin,
read-only, security headers); the routes here only read the request and call
:class:`~ingest.console.service.Console`. Templates and static files ship in the package:
the console needs no network but Redis.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
import redis
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ingest.connection import connect
from ingest.deadletter import DeadLetterFilter
from ingest.errors import NotFoundError
from ingest.logs import get_logger
from ingest.settings import Settings

from . import schemas
from .config import ConsoleOptions
from .forms import MAX_OFFSET, PAGE_SIZES, WINDOW_LABELS, FilterForm, resolved_params
from .operations import Action, Target
from .security import (
    CONTENT_SECURITY_POLICY,
    CSRF_FIELD,
    LOGIN_PATH,
    SESSION_COOKIE,
    ConsoleGuard,
    CsrfTokens,
    safe_next,
    session_cookie_value,
    style_hash,
)
from .service import Console, operation_view

HERE = Path(__file__).resolve().parent
ACTION_WAIT = 3.0  # seconds a confirmation waits for a small action to finish
LIVE_INTERVAL_MS = 2000

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


def _package_version() -> str:
    try:
        return version("datafast-ingest")
    except PackageNotFoundError:
        return "0"


def create_app(
    settings: Settings,
    *,
    options: ConsoleOptions | None = None,
    connection: redis.Redis | None = None,
    clock: Callable[[], float] = time.time,
    csrf_secret: bytes | None = None,
    warm_index: bool = True,
) -> FastAPI:
    """The console for ``settings.queue``.

    ``connection`` defaults to one made from ``settings.redis_url`` (closed on shutdown);
    ``warm_index`` reads the dead-letter index in the background at startup so the first
    filtered page does not wait for it.
    """
    options = options or ConsoleOptions()
    owned = connection is None
    conn = connection or connect(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
    console = Console(settings, conn, options=options, clock=clock)
    log = get_logger(component="console")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if warm_index:
            console.warm()
        try:
            yield
        finally:
            if owned:
                conn.close()
                conn.connection_pool.disconnect()

    app = FastAPI(
        title="datafast-ingest operator console",
        version=_package_version(),
        description="Watch the pipeline, browse dead letters, replay or purge them, probe "
        "paused websites. Every POST needs the X-CSRF-Token header (GET /api/session) and a "
        "same-origin Origin header; with INGEST_CONSOLE_TOKEN set, every request needs "
        "Authorization: Bearer <token>.",
        docs_url=None,  # Swagger UI would load scripts from a CDN; /openapi.json is served
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.console = console
    app.add_middleware(ConsoleGuard, options=options, csrf=CsrfTokens(csrf_secret))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(_api(console, options))
    app.include_router(_pages(console, options, clock))

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def _redis_down(request: Request, exc: Exception) -> Response:
        log.error("console cannot reach Redis", error=exc)
        return _problem(request, 503, "Redis cannot be reached; try again in a moment.")

    @app.exception_handler(NotFoundError)
    async def _not_found(request: Request, exc: Exception) -> Response:
        return _problem(request, 404, "No such dead letter (it may have been replayed or purged).")

    return app


def _problem(request: Request, status: int, detail: str) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": detail}, status_code=status)
    return _render(request, "error.html", status=status, detail=detail)


def _actor(request: Request) -> str:
    client = request.client.host if request.client else "unknown"
    return f"{client} (token)" if getattr(request.state, "authenticated", False) else client


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


# -- the JSON API ---------------------------------------------------------------------------


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


def _api(console: Console, options: ConsoleOptions) -> APIRouter:
    router = APIRouter(prefix="/api", responses={**_UNAUTHORIZED, **_UNAVAILABLE})

    @router.get("/session", tags=["session"])
    def session(request: Request) -> schemas.Session:
        """This browser's CSRF token, and what this console allows."""
        return schemas.Session(
            csrf_token=request.state.csrf_token,
            read_only=options.read_only,
            token_required=options.token_value is not None,
        )

    @router.get("/overview", tags=["overview"])
    def overview() -> schemas.Overview:
        """The accounting identity with each figure, rates, oldest age, workers, pauses."""
        return console.overview()

    @router.get("/dead-letters", tags=["dead letters"])
    def dead_letters(
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
    def dead_letter(dead_id: str) -> schemas.DeadLetterDetail:
        """One dead letter (by id, or by transaction id when unambiguous), masked."""
        return console.dead_letter(dead_id)

    @router.post(
        "/dead-letters/{dead_id:path}/reveal",
        tags=["dead letters"],
        responses={**_NOT_FOUND, **_FORBIDDEN},
    )
    def reveal(dead_id: str, request: Request) -> schemas.DeadLetterDetail:
        """The same, with emails and names shown. Logged."""
        return console.dead_letter(dead_id, reveal=True, actor=_actor(request))

    def act(action: Action, body: schemas.ActionRequest, request: Request) -> schemas.ActionResult:
        target = _api_target(body)
        if not body.confirm:
            preview = console.preview(action, target, as_of=body.as_of)
            return schemas.ActionResult(dry_run=True, preview=preview)
        operation = console.start(action, target, as_of=body.as_of, actor=_actor(request))
        operation = console.operations.wait(operation.id, ACTION_WAIT) or operation
        return schemas.ActionResult(dry_run=False, operation=operation_view(operation))

    action_responses: dict[int | str, dict[str, Any]] = {
        **_FORBIDDEN,
        400: {"model": schemas.Problem, "description": "Nothing chosen, or chosen twice."},
    }

    @router.post("/replay", tags=["actions"], responses=action_responses)
    def replay(
        body: Annotated[schemas.ActionRequest, Body()], request: Request
    ) -> schemas.ActionResult:
        """Dry run (default) or, with ``confirm``, put dead letters back on the queue:
        the same idempotent, rate-limited replay as ``ingest dlq replay``."""
        return act("replay", body, request)

    @router.post("/purge", tags=["actions"], responses=action_responses)
    def purge(
        body: Annotated[schemas.ActionRequest, Body()], request: Request
    ) -> schemas.ActionResult:
        """Dry run (default) or, with ``confirm``, delete dead letters for good."""
        return act("purge", body, request)

    @router.get("/operations/{operation_id}", tags=["actions"], responses=_NOT_FOUND)
    def operation(operation_id: str) -> schemas.Operation:
        """A replay or purge started here: progress, then how many were requeued."""
        found = console.operations.get(operation_id)
        if found is None:
            raise HTTPException(404, "no such operation (this console keeps the last 100)")
        return operation_view(found)

    @router.get("/paused", tags=["paused websites"])
    def paused() -> list[schemas.PausedWebsite]:
        """Websites paused after a 401/403: why, since when, last probe, parked events."""
        return console.paused()

    @router.post("/paused/probe", tags=["paused websites"], responses={**_NOT_FOUND, **_FORBIDDEN})
    def probe(
        website: Annotated[str, Body(embed=True, max_length=255)], request: Request
    ) -> schemas.ProbeResult:
        """Ask the workers to probe this website at their next housekeeping."""
        if not console.request_probe(website, actor=_actor(request)):
            raise HTTPException(404, "that website is not paused")
        return schemas.ProbeResult(website=website, requested=True)

    return router


# -- the pages ------------------------------------------------------------------------------


def _number(value: Any) -> str:
    if value is None:
        return "\N{EN DASH}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "\N{EN DASH}"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"


def _when(value: str | None) -> str:
    """An ISO 8601 UTC time as ``2026-05-01 09:00:00``; anything else as it is."""
    if not value:
        return "\N{EN DASH}"
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _rate(value: float | None) -> str:
    return "measuring…" if value is None else f"{value:,.1f}/s"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value from Redis is text, never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["number"] = _number
    env.filters["age"] = _age
    env.filters["rate"] = _rate
    env.filters["when"] = _when
    env.filters["urlpart"] = lambda value: quote(str(value), safe="")
    env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False)
    return env


_TEMPLATES = Jinja2Templates(env=_environment())
_LOGIN_CSS = (HERE / "static" / "login.css").read_text()
_LOGIN_CSP = CONTENT_SECURITY_POLICY.replace(
    "style-src 'self'", f"style-src 'self' {style_hash(_LOGIN_CSS)}"
)


def _context(request: Request, **values: Any) -> dict[str, Any]:
    console: Console = request.app.state.console
    options = console.options
    return {
        "queue": console.queue,
        "csrf_field": CSRF_FIELD,
        "csrf_token": request.state.csrf_token,
        "read_only": options.read_only,
        "token_required": options.token_value is not None,
        "active": "",
        **values,
    }


def _render(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    return _TEMPLATES.TemplateResponse(
        request, template, _context(request, status_code=status, **values), status_code=status
    )


def _multi(items: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in items:
        out.setdefault(key, []).append(value)
    return out


async def _form(request: Request) -> dict[str, list[str]]:
    body = await request.body()
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)


def _pages(console: Console, options: ConsoleOptions, clock: Callable[[], float]) -> APIRouter:
    router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)

    @router.get("/")
    def overview(request: Request) -> HTMLResponse:
        return _render(
            request,
            "overview.html",
            active="overview",
            ov=console.overview(),
            live_interval=LIVE_INTERVAL_MS,
        )

    @router.get("/dead-letters")
    def dead_letters(request: Request) -> HTMLResponse:
        form = FilterForm.parse(_multi(request.query_params.multi_items()))
        selection = form.selection(clock())
        if form.ids:
            selection = DeadLetterFilter(ids=frozenset(form.ids))
        page = console.dead_letters(selection, offset=form.offset, limit=form.limit)
        last_offset = max(0, (page.matched - 1) // form.limit * form.limit)
        return _render(
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
    def dead_letter(request: Request, dead_id: str) -> HTMLResponse:
        return _render(
            request, "dead_letter.html", active="dead-letters", letter=console.dead_letter(dead_id)
        )

    @router.post("/dead-letters/{dead_id:path}/reveal")
    async def reveal(request: Request, dead_id: str) -> HTMLResponse:
        letter = await run_in_threadpool(
            lambda: console.dead_letter(dead_id, reveal=True, actor=_actor(request))
        )
        return _render(request, "dead_letter.html", active="dead-letters", letter=letter)

    def preview_page(
        request: Request,
        action: Action,
        form: FilterForm,
        *,
        status: int = 200,
        error: str | None = None,
    ) -> HTMLResponse:
        if options.read_only:
            return _render(request, "error.html", status=403, detail="This console is read-only.")
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
        return _render(
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

    async def confirm(request: Request, action: Action) -> Response:
        fields = await _form(request)
        form = FilterForm.parse(fields)
        if (fields.get("confirm") or [""])[0] != "yes":
            return await run_in_threadpool(
                lambda: preview_page(
                    request,
                    action,
                    form,
                    status=400,
                    error="Nothing was changed: this needs your confirmation.",
                )
            )
        target = form.target(clock())
        if form.errors:
            return await run_in_threadpool(lambda: preview_page(request, action, form, status=400))
        if (
            target.selection is not None
            and target.selection.is_empty
            and (fields.get("all") or [""])[0] != "1"
        ):
            return await run_in_threadpool(
                lambda: preview_page(
                    request,
                    action,
                    form,
                    status=400,
                    error="Nothing was changed: acting on every dead letter needs its own "
                    "confirmation.",
                )
            )
        try:
            as_of: float | None = float((fields.get("as_of") or [""])[0])
        except ValueError:
            as_of = None

        def start() -> str:
            operation = console.start(action, target, as_of=as_of, actor=_actor(request))
            console.operations.wait(operation.id, ACTION_WAIT)
            return operation.id

        operation_id = await run_in_threadpool(start)
        return RedirectResponse(f"/operations/{quote(operation_id)}", status_code=303)

    @router.get("/replay")
    def replay_preview(request: Request) -> HTMLResponse:
        return preview_page(
            request, "replay", FilterForm.parse(_multi(request.query_params.multi_items()))
        )

    @router.get("/purge")
    def purge_preview(request: Request) -> HTMLResponse:
        return preview_page(
            request, "purge", FilterForm.parse(_multi(request.query_params.multi_items()))
        )

    @router.post("/replay", response_model=None)
    async def replay(request: Request) -> Response:
        return await confirm(request, "replay")

    @router.post("/purge", response_model=None)
    async def purge(request: Request) -> Response:
        return await confirm(request, "purge")

    @router.get("/operations/{operation_id}")
    def operation(request: Request, operation_id: str) -> HTMLResponse:
        found = console.operations.get(operation_id)
        if found is None:
            return _render(
                request,
                "error.html",
                status=404,
                detail="No such operation (this console keeps the last 100).",
            )
        return _render(request, "operation.html", active="dead-letters", op=operation_view(found))

    @router.get("/paused")
    def paused(request: Request) -> HTMLResponse:
        probed = request.query_params.get("probed")
        return _render(
            request, "paused.html", active="paused", sites=console.paused(), probed=probed
        )

    @router.post("/paused/probe", response_model=None)
    async def probe(request: Request) -> Response:
        website = ((await _form(request)).get("website") or [""])[0]
        requested = await run_in_threadpool(
            lambda: console.request_probe(website, actor=_actor(request))
        )
        if not requested:
            return _render(
                request,
                "error.html",
                status=404,
                detail="That website is not paused (any more).",
            )
        return RedirectResponse(f"/paused?{urlencode({'probed': website})}", status_code=303)

    @router.get(LOGIN_PATH)
    def login_page(request: Request, next: str = "/") -> Response:
        if options.token_value is None:
            return RedirectResponse("/", status_code=303)
        return _login(request, safe_next(next))

    @router.post(LOGIN_PATH, response_model=None)
    async def login(request: Request) -> Response:
        fields = await _form(request)
        target = safe_next((fields.get("next") or ["/"])[0])
        token = options.token_value
        supplied = (fields.get("token") or [""])[0]
        if token is None:
            return RedirectResponse("/", status_code=303)
        if not _same_secret(supplied, token):
            get_logger(component="console").warning("console login refused", client=_actor(request))
            return _login(request, target, error="That token is not right.", status=401)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_cookie_value(token),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @router.post("/logout", response_model=None)
    async def logout(request: Request) -> Response:
        response = RedirectResponse(LOGIN_PATH, status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    return router


def _same_secret(supplied: str, token: str) -> bool:
    return hmac.compare_digest(supplied.encode(), token.encode())


def _login(
    request: Request, target: str, *, error: str | None = None, status: int = 200
) -> Response:
    response = _render(
        request, "login.html", status=status, next=target, error=error, login_css=_LOGIN_CSS
    )
    response.headers["content-security-policy"] = _LOGIN_CSP
    return response
