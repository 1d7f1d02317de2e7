"""What the console's routes read from a request: the app's console and clock (as FastAPI
dependencies), who is acting, and the fields of a form or query string."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import Depends, Request

from ingest.console.forms import FilterForm
from ingest.console.service import Console


async def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


async def _clock(request: Request) -> Callable[[], float]:
    clock: Callable[[], float] = request.app.state.clock
    return clock


# The Console of this app (create_app puts it on app.state), and the clock it was given.
ConsoleDep = Annotated[Console, Depends(_console)]
ClockDep = Annotated[Callable[[], float], Depends(_clock)]


def actor(request: Request) -> str:
    """Who did it, for the log: the client's address, marked when it gave the token."""
    client = request.client.host if request.client else "unknown"
    return f"{client} (token)" if getattr(request.state, "authenticated", False) else client


def query_form(request: Request) -> FilterForm:
    """The dead-letter filter in the query string (every value of a repeated field)."""
    fields: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        fields.setdefault(key, []).append(value)
    return FilterForm.parse(fields)


async def form_fields(request: Request) -> dict[str, list[str]]:
    """A POSTed form's fields, every value of each, blanks kept."""
    body = await request.body()
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
