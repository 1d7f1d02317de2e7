"""Signing in with INGEST_CONSOLE_TOKEN (a session cookie), and signing out.

Without a token configured there is nothing to sign in to: the login page sends the
browser to the overview.
"""

from __future__ import annotations

import hmac

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ingest.console.rendering import HERE, page_router, render
from ingest.console.security import (
    CONTENT_SECURITY_POLICY,
    LOGIN_PATH,
    SESSION_COOKIE,
    cookie_name,
    safe_next,
    style_hash,
)
from ingest.console.sessions import Sessions
from ingest.logs import get_logger

from ._request import ConsoleDep, actor, form_fields

# The login page inlines its stylesheet (without the token a browser cannot load /static),
# so its CSP allows exactly that stylesheet, by hash.
_LOGIN_CSS = (HERE / "static" / "login.css").read_text()
_LOGIN_CSP = CONTENT_SECURITY_POLICY.replace(
    "style-src 'self'", f"style-src 'self' {style_hash(_LOGIN_CSS)}"
)

router = page_router()


@router.get(LOGIN_PATH)
def login_page(request: Request, console: ConsoleDep, next: str = "/") -> Response:
    if console.options.token_value is None:
        return RedirectResponse("/", status_code=303)
    return _login(request, safe_next(next))


@router.post(LOGIN_PATH, response_model=None)
async def login(request: Request, console: ConsoleDep) -> Response:
    fields = await form_fields(request)
    target = safe_next((fields.get("next") or ["/"])[0])
    token = console.options.token_value
    supplied = (fields.get("token") or [""])[0]
    if token is None:
        return RedirectResponse("/", status_code=303)
    if not _same_secret(supplied, token):
        get_logger(component="console").warning("console login refused", client=actor(request))
        return _login(request, target, error="That token is not right.", status=401)
    sessions: Sessions = request.app.state.sessions
    previous: str | None = request.state.session_id
    if previous is not None:
        await run_in_threadpool(sessions.end, previous)  # a login never reuses a session
    session_id = await run_in_threadpool(sessions.start)
    secure: bool = request.state.secure
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        cookie_name(SESSION_COOKIE, secure),
        session_id,
        max_age=sessions.lifetime,
        httponly=True,
        samesite="strict",
        secure=secure,
        path="/",
    )
    return response


@router.post("/logout", response_model=None)
async def logout(request: Request) -> Response:
    session_id: str | None = request.state.session_id
    if session_id is not None:
        sessions: Sessions = request.app.state.sessions
        await run_in_threadpool(sessions.end, session_id)
    secure: bool = request.state.secure
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    response.delete_cookie(
        cookie_name(SESSION_COOKIE, secure),
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure,
    )
    return response


def _same_secret(supplied: str, token: str) -> bool:
    return hmac.compare_digest(supplied.encode(), token.encode())


def _login(
    request: Request, target: str, *, error: str | None = None, status: int = 200
) -> Response:
    response = render(
        request, "login.html", status=status, next=target, error=error, login_css=_LOGIN_CSS
    )
    response.headers["content-security-policy"] = _LOGIN_CSP
    return response
