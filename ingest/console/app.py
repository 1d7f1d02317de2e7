"""The console's ASGI app: server-rendered pages, and the JSON API under /api/ behind them.

:func:`create_app` builds it from the package's :class:`~ingest.settings.Settings`. Every
request passes :class:`~ingest.console.security.ConsoleGuard` first (token, CSRF, origin,
read-only, security headers); the routes (:mod:`ingest.console.routes`, one router per
page) only read the request and call :class:`~ingest.console.service.Console`. Templates
and static files ship in the package: the console needs no network but Redis.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from importlib.metadata import PackageNotFoundError, version

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from ingest.connection import connect
from ingest.errors import NotFoundError
from ingest.logs import get_logger
from ingest.settings import Settings

from .config import ConsoleOptions
from .rendering import HERE, render
from .routes import ROUTERS
from .security import ConsoleGuard, CsrfTokens
from .service import Console
from .sessions import Sessions


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
    app.state.clock = clock
    sessions = Sessions(
        conn,
        settings.queue,
        lifetime=settings.console_session_lifetime,
        token=options.token_value,
        clock=clock,
    )
    app.state.sessions = sessions
    app.add_middleware(
        ConsoleGuard, options=options, csrf=CsrfTokens(csrf_secret), sessions=sessions
    )
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for router in ROUTERS:
        app.include_router(router)

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
    return render(request, "error.html", status=status, detail=detail)
