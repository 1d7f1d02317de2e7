"""How the console's pages are rendered: the Jinja environment, its filters, and the values
every template can use.

Templates ship in the package (``templates/``); every value from Redis is text, so
autoescaping is on everywhere.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from .security import CSRF_FIELD
from .service import Console

HERE = Path(__file__).resolve().parent


def page_router() -> APIRouter:
    """A router for server-rendered pages: HTML answers, left out of /openapi.json."""
    return APIRouter(include_in_schema=False, default_response_class=HTMLResponse)


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


def render(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    """``template`` with the values every page needs (queue, CSRF token, read-only...)."""
    return _TEMPLATES.TemplateResponse(
        request, template, _context(request, status_code=status, **values), status_code=status
    )
