"""The console's routes, one router per page (and one for the JSON API).

Each route reads the request and calls :class:`~ingest.console.service.Console`, which it
gets as a dependency (``create_app`` puts it on ``app.state``). Token, CSRF, origin and
read-only checks happen before any route, in :class:`~ingest.console.security.ConsoleGuard`.
"""

from __future__ import annotations

from fastapi import APIRouter

from . import actions, api, dead_letters, login, overview, paused

# In the order the app matches them: the API first, then the pages.
ROUTERS: tuple[APIRouter, ...] = (
    api.router,
    overview.router,
    dead_letters.router,
    actions.router,
    paused.router,
    login.router,
)

__all__ = ["ROUTERS"]
