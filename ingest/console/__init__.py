"""The operator console: a web page to watch the pipeline, browse dead letters, replay or
purge them, and probe paused websites (``ingest console``).

Server-rendered pages with a JSON API under ``/api/`` (OpenAPI at ``/openapi.json``),
served by uvicorn from :func:`create_app`. ``create_app`` is imported on first use, so
registering the ``ingest console`` command costs the other commands no FastAPI import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import ConsoleOptions, ConsoleSettings, check_bind

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["ConsoleOptions", "ConsoleSettings", "check_bind", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
