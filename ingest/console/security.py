"""What keeps the console safe to run: one guard in front of every request, and masking.

:class:`ConsoleGuard` is a plain ASGI middleware, so no route can forget a check. In order:

1. without a token, the ``Host`` header must name loopback (a DNS-rebinding page cannot
   borrow the browser's access to 127.0.0.1);
2. only GET, HEAD and POST exist; every POST must come from this origin (``Origin``, else
   ``Referer``; ``Sec-Fetch-Site`` when the browser sends it) and carry the CSRF token
   (``X-CSRF-Token`` header or ``csrf_token`` form field). Signed in, the token is bound
   to the session; otherwise to this browser's CSRF cookie. Otherwise 403, before any
   route runs: a cross-site post changes nothing;
3. with a token, every request but the login form needs it: ``Authorization: Bearer``
   or the HttpOnly, SameSite=Strict cookie of a live session (:mod:`.sessions`);
4. in read-only mode every POST that would change the pipeline answers 403;
5. every response carries the security headers (CSP without inline scripts,
   ``frame-ancestors 'none'``, ``nosniff``, no caching), whatever answers it.

Cookies are ``Secure`` and named with the ``__Host-`` prefix (so a sibling domain cannot
plant them) whenever the request came over HTTPS or names a host other than loopback.

Personal data (emails, names) is masked by :func:`mask_event` and :func:`mask_text`
unless an operator explicitly reveals one dead letter (logged by the app).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import redis
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.errors import MalformedRequestError
from ingest.logs import get_logger
from ingest.personal import EMAIL_FIELDS, NAME_FIELDS
from ingest.personal import mask_email as mask_email  # re-exported: the console's masking
from ingest.personal import mask_name as mask_name
from ingest.personal import mask_text as mask_text

from .config import ConsoleOptions, is_loopback
from .sessions import Sessions

SESSION_COOKIE = "ingest_console_session"
CSRF_COOKIE = "ingest_console_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
MAX_FORM_BYTES = 256 * 1024
LOGIN_PATH = "/login"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
    (b"cache-control", b"no-store"),
)

# -- masking ------------------------------------------------------------------------------


def mask_event(value: Any, key: str | None = None) -> Any:
    """A copy of an event body with emails and names masked, at any depth."""
    if isinstance(value, Mapping):
        return {k: mask_event(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_event(item) for item in value]
    if isinstance(value, str):
        if key in EMAIL_FIELDS:
            return mask_email(value)
        if key in NAME_FIELDS:
            return mask_name(value)
        return mask_text(value)
    return value


# -- tokens -------------------------------------------------------------------------------

HOST_PREFIX = "__Host-"


def cookie_name(base: str, secure: bool) -> str:
    """The name of a cookie: ``__Host-`` prefixed when it is Secure (browsers then refuse
    it from any other host or path, and over plain HTTP)."""
    return HOST_PREFIX + base if secure else base


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def parse_cookies(header: str) -> dict[str, str]:
    """A ``Cookie`` header as name -> value, leniently, as Starlette's ``request.cookies``
    reads it (a later pair of the same name wins; surrounding quotes dropped). Ours, not
    Starlette's undocumented ``cookie_parser``, which tied the console to one Starlette."""
    cookies: dict[str, str] = {}
    for pair in header.split(";"):
        name, _, value = pair.partition("=") if "=" in pair else ("", "", pair)
        name, value = name.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if name or value:
            cookies[name] = value
    return cookies


class CsrfTokens:
    """CSRF tokens as HMACs under a per-process secret of what they are bound to: a
    session (``session_binding``) when the browser is signed in, else its CSRF cookie. A
    token obtained for a cookie (even one an attacker planted) is useless in a session."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    @staticmethod
    def new_cookie() -> str:
        return secrets.token_urlsafe(32)

    def token_for(self, binding: str) -> str:
        return hmac.new(self._secret, binding.encode(), hashlib.sha256).hexdigest()

    def valid(self, binding: str | None, token: str | None) -> bool:
        if not binding or not token:
            return False
        return _equal(self.token_for(binding), token)


def session_binding(session_id: str) -> str:
    # A ':' never occurs in a CSRF cookie, so a session's binding is never a cookie's.
    return f"session:{session_id}"


def style_hash(css: str) -> str:
    """A CSP source for one inline ``<style>`` element (the login page's)."""
    digest = hashlib.sha256(css.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


# -- request checks -----------------------------------------------------------------------


# A Host header: a name or an IPv4 address, or an [IPv6] literal, and an optional port.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_\-.]+)(?::(?P<port>[0-9]{1,5}))?")


def host_is_loopback(host_header: str) -> bool:
    """True when ``host_header`` names loopback; :class:`~ingest.errors.MalformedRequestError`
    when it is not a host at all (``[evil``, a port past 65535)."""
    if not host_header:
        return False
    matched = _HOST.fullmatch(host_header)
    port = matched.group("port") if matched else None
    if matched is None or (port is not None and int(port) > 65535):
        raise MalformedRequestError("Host")
    hostname = urlsplit(f"//{host_header}").hostname
    return hostname is not None and is_loopback(hostname)


def same_origin(headers: Mapping[str, str], scheme: str) -> str | None:
    """``None`` when the request comes from this origin, else why it does not;
    :class:`~ingest.errors.MalformedRequestError` for a Referer that is not a URL."""
    host = headers.get("host")
    if not host:
        return "no Host header"
    expected = f"{scheme}://{host}".lower()
    site = headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return f"Sec-Fetch-Site is {site}"
    origin = headers.get("origin")
    if origin is not None:
        return None if origin.lower() == expected else "Origin is another site"
    referer = headers.get("referer")
    if referer:
        try:
            parts = urlsplit(referer)
        except ValueError as exc:  # "http://[x": an unterminated IPv6 literal
            raise MalformedRequestError("Referer") from exc
        return (
            None
            if f"{parts.scheme}://{parts.netloc}".lower() == expected
            else ("Referer is another site")
        )
    return "no Origin or Referer header"


def safe_next(value: str | None) -> str:
    """Where to go after logging in: a path on this site only (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _read_only_allows(path: str) -> bool:
    # Logging in or out and revealing one record change nothing in the pipeline.
    return path in (LOGIN_PATH, "/logout") or path.endswith("/reveal")


class ConsoleGuard:
    """The ASGI middleware described in the module docstring."""

    def __init__(
        self, app: ASGIApp, *, options: ConsoleOptions, csrf: CsrfTokens, sessions: Sessions
    ) -> None:
        self.app = app
        self.options = options
        self.csrf = csrf
        self.sessions = sessions
        self._token = options.token_value
        self._log = get_logger(component="console")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._guard(scope, receive, tracked)
        except Exception as exc:
            # Whatever failed, the answer still carries the security headers (Starlette's
            # own 500 page, outside this middleware, would not) and says nothing of why.
            if started:
                raise
            path: str = scope["path"]
            secured = _decorated(send, None, False)
            if isinstance(exc, MalformedRequestError):
                await self._refuse(secured, path, 400, str(exc))
            elif isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
                self._log.error("console cannot reach Redis", error=exc)
                await _respond(secured, path, 503, "Redis cannot be reached; try again later.")
            else:
                self._log.error("console request failed", path=path, error=exc)
                await _respond(secured, path, 500, "internal error (the console's log says why)")

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        cookies = parse_cookies(headers.get("cookie", ""))
        path: str = scope["path"]
        method: str = scope["method"]
        secure = scope.get("scheme") == "https" or not host_is_loopback(headers.get("host", ""))

        csrf_name = cookie_name(CSRF_COOKIE, secure)
        csrf_cookie = cookies.get(csrf_name, "")
        fresh_cookie: str | None = None
        if not re.fullmatch(r"[A-Za-z0-9_\-]{32,64}", csrf_cookie):
            fresh_cookie = csrf_cookie = self.csrf.new_cookie()
        state = scope.setdefault("state", {})
        state["secure"] = secure
        state["authenticated"] = False
        send = _decorated(send, f"{csrf_name}={fresh_cookie}" if fresh_cookie else None, secure)

        if self._token is None and not host_is_loopback(headers.get("host", "")):
            await self._refuse(
                send,
                path,
                403,
                "unexpected Host header: without "
                "INGEST_CONSOLE_TOKEN the console answers only to loopback names",
            )
            return
        session_id = await self._session(cookies.get(cookie_name(SESSION_COOKIE, secure), ""))
        state["session_id"] = session_id
        binding = session_binding(session_id) if session_id else csrf_cookie
        state["csrf_token"] = self.csrf.token_for(binding)
        if method not in ("GET", "HEAD", "POST"):
            await _respond(send, path, 405, "method not allowed", [(b"allow", b"GET, HEAD, POST")])
            return
        if method == "POST":
            why = same_origin(headers, scope.get("scheme", "http"))
            if why is not None:
                await self._refuse(send, path, 403, f"cross-site request refused ({why})")
                return
            supplied = headers.get(CSRF_HEADER)
            body: bytes | None = None
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if supplied is None and content_type == "application/x-www-form-urlencoded":
                body = await _read_body(receive, MAX_FORM_BYTES)
                if body is None:
                    await _respond(send, path, 413, "form too large")
                    return
                form = parse_qs(body.decode("utf-8", "replace"))
                values = form.get(CSRF_FIELD)
                supplied = values[0] if values else None
            unbound = session_id is None and fresh_cookie is not None
            if unbound or not self.csrf.valid(binding, supplied):
                await self._refuse(send, path, 403, "missing or invalid CSRF token")
                return
            if body is not None:
                receive = _replay(body, receive)
        if self._token is not None:
            if session_id is not None or self._bearer(headers):
                state["authenticated"] = True
            elif path != LOGIN_PATH:
                await self._challenge(send, path, scope.get("query_string", b""))
                return
        if self.options.read_only and method == "POST" and not _read_only_allows(path):
            await self._refuse(send, path, 403, "this console is read-only")
            return
        await self.app(scope, receive, send)

    async def _session(self, session_id: str) -> str | None:
        """The session id from the cookie while that session lives, else None."""
        if self._token is None or not session_id:
            return None
        alive = await run_in_threadpool(self.sessions.valid, session_id)
        return session_id if alive else None

    def _bearer(self, headers: Mapping[str, str]) -> bool:
        assert self._token is not None
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and _equal(credentials.strip(), self._token)

    async def _challenge(self, send: Send, path: str, query: bytes) -> None:
        if path.startswith("/api/") or path == "/openapi.json":
            await _respond(
                send,
                path,
                401,
                "authentication required: Authorization: Bearer <INGEST_CONSOLE_TOKEN>",
                [(b"www-authenticate", b'Bearer realm="ingest console"')],
            )
            return
        target = path + (f"?{query.decode('latin-1')}" if query else "")
        location = f"{LOGIN_PATH}?next={quote(target, safe='')}"
        await _respond(send, path, 303, "login required", [(b"location", location.encode())])

    async def _refuse(self, send: Send, path: str, status: int, reason: str) -> None:
        self._log.warning("console request refused", path=path, status=status, reason=reason)
        await _respond(send, path, status, reason)


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out and name != "cookie" else value
    return out


def _decorated(send: Send, fresh_cookie: str | None, secure: bool) -> Send:
    """``send`` with the security headers added to the answer, and ``name=value`` of a new
    CSRF cookie when the browser had none."""

    async def decorated(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers: list[tuple[bytes, bytes]] = list(message.get("headers", []))
            present = {name.lower() for name, _ in headers}
            if b"content-security-policy" not in present:
                headers.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
            headers.extend(item for item in SECURITY_HEADERS if item[0] not in present)
            if fresh_cookie is not None:
                cookie = f"{fresh_cookie}; Path=/; HttpOnly; SameSite=Strict"
                headers.append((b"set-cookie", (cookie + ("; Secure" if secure else "")).encode()))
            message = {**message, "headers": headers}
        await send(message)

    return decorated


async def _respond(
    send: Send,
    path: str,
    status: int,
    detail: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A refusal: JSON under /api/, plain text elsewhere (never echoing request data)."""
    if path.startswith("/api/") or path == "/openapi.json":
        body = json.dumps({"detail": detail}).encode()
        content_type = b"application/json"
    else:
        body = f"{status}: {detail}\n".encode()
        content_type = b"text/plain; charset=utf-8"
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the already-read body to the app, then defers to the server."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
