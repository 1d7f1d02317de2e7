"""The worker's HTTP/1.1 client: keep-alive connections to one API host, answers parsed by
``httptools`` (the C parser uvicorn uses).

The worker sends one kind of request: a POST of a few hundred bytes of JSON, answered by a
few bytes of JSON. A general client spends most of its time on what this request never needs
(URL objects, header multidicts, cookie jars, tracing hooks, stream readers): aiohttp cost
about half of the worker's CPU (bench/results/issue17-profile-after.txt). Here a request is
one pre-built head per website plus the body, written in one call, and an answer is a status,
a dict of lower-case headers and the body bytes (bench/http_clients.py has the comparison).

What it does, and no more:

- at most ``limit`` connections (a request waits for a free one; the wait counts against its
  timeout), reused while the server keeps them alive and dropped after ``keepalive`` idle
  seconds, on ``Connection: close``, on a reset, or on anything it cannot parse;
- ``timeout`` bounds a request as a whole (waiting for a connection, connecting, the answer);
  a connection whose request timed out or was cancelled is closed, never reused;
- ``https://`` with certificate verification and SNI (``ssl.create_default_context()``);
- answers with a Content-Length, chunked, or read until the server closes.

A connection that fails before its whole answer arrived raises :class:`TransportError` (or
``TimeoutError``): it is never retried here, not even a kept-alive one closed before a byte
of the answer (see :data:`KEEPALIVE`). The worker retries it later like any transient
failure, which is safe because the API is idempotent on ``transaction_id``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

_MAX_BODY = 1 << 20  # an answer is a few bytes of JSON; past this something is wrong
_CLOSE_WAIT = 1.0  # seconds aclose() waits for TLS connections to say goodbye
KEEPALIVE = 4.0
"""Seconds an idle connection is kept for reuse: under the 5 s that uvicorn, Node and many
API servers keep theirs. A request sent on a connection the server is closing as idle fails
unanswered, and we never resend it (the server may have read it: every request is an
attempt); reconnecting after a lull of more than this is cheaper than that attempt."""


class TransportError(ConnectionError):
    """The request failed before its whole answer arrived. Never carries request headers."""


class Response:
    """One answer: status, headers by lower-case name (repeats joined by ``, ``), body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"Response(status={self.status}, body={len(self.body)} bytes)"


class Request:
    """A request head built once (method, target, headers), completed per body.

    Its repr names the target only: the head holds the Authorization header.
    """

    __slots__ = ("_head", "target")

    def __init__(self, head: bytes, target: str) -> None:
        self._head = head
        self.target = target

    def encode(self, body: bytes) -> bytes:
        return b"%s%d\r\n\r\n%s" % (self._head, len(body), body)

    def __repr__(self) -> str:
        return f"Request(target={self.target!r})"


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one request at a time (no pipelining)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: HttpTransport) -> None:
        self._loop = loop
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self._size = 0
        self._status = 0
        self._until_eof = False
        self.open = False
        self.reusable = False
        self.idle_since = 0.0
        self.lost: asyncio.Future[None] = loop.create_future()

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not a subclass of asyncio.Transport, hence cast).
        self._transport = cast(asyncio.Transport, transport)
        self.open = True

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            # Bytes nobody asked for: the connection's state is unknown, so it goes.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(TransportError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(TransportError(f"malformed answer: {exc}"))

    def eof_received(self) -> bool | None:
        return False  # half-closed is closed: let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.reusable = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if exc is None and self._until_eof:
                # An answer with neither Content-Length nor chunks ends when the server closes.
                waiter.set_result(Response(self._status, self._headers, b"".join(self._chunks)))
            else:
                error = TransportError("the server closed the connection before answering")
                error.__cause__ = exc
                waiter.set_exception(error)
        self._pool._forget(self)
        if not self.lost.done():
            self.lost.set_result(None)

    # -- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = {}
        self._chunks = []
        self._size = 0
        self._status = 0
        self._until_eof = False

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        self._status = status = self._parser.get_status_code()
        headers = self._headers
        self._until_eof = (
            "content-length" not in headers
            and "transfer-encoding" not in headers
            and status >= 200
            and status not in (204, 304)
        )

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > _MAX_BODY:
            raise TransportError(f"answer larger than {_MAX_BODY} bytes")
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._status < 200:
            return  # an interim answer (100 Continue): the real one follows
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        self.reusable = self._parser.should_keep_alive()
        waiter.set_result(Response(self._status, self._headers, b"".join(self._chunks)))

    # -- used by the pool -----------------------------------------------------------------

    def request(self, data: bytes) -> asyncio.Future[Response]:
        assert self._transport is not None
        waiter: asyncio.Future[Response] = self._loop.create_future()
        self._waiter = waiter
        self.reusable = False
        self._transport.write(data)
        return waiter

    def _fail(self, error: BaseException) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.abort()


class HttpTransport:
    """A bounded keep-alive pool of HTTP/1.1 connections to the host of ``url``.

    Built anywhere; binds to the running event loop on its first request.
    """

    def __init__(
        self,
        url: str,
        *,
        limit: int,
        timeout: float,
        keepalive: float = KEEPALIVE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the API URL must be http:// or https:// with a host")
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        default_port = 443 if self.https else 80
        self.port = parts.port or default_port
        self.base_path = parts.path.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host_header = host if self.port == default_port else f"{host}:{self.port}"
        self.limit = limit
        self.timeout = timeout
        self.keepalive = keepalive
        self._ssl: ssl.SSLContext | None = None
        if self.https:
            self._ssl = ssl_context or ssl.create_default_context()
        self._slots: asyncio.Semaphore | None = None
        self._idle: collections.deque[_Connection] = collections.deque()
        self._connections: set[_Connection] = set()
        self._closed = False

    def __repr__(self) -> str:
        scheme = "https" if self.https else "http"
        return (
            f"HttpTransport({scheme}://{self._host_header}, limit={self.limit}, "
            f"open={len(self._connections)})"
        )

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def prepare(self, method: str, path: str, headers: Mapping[str, str]) -> Request:
        """A request for ``path`` (below the URL's own path, query included) with ``headers``;
        ``Host`` and ``Content-Length`` are added here."""
        target = self.base_path + path
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host_header}"]
        for name, value in headers.items():
            if any(c in name or c in value for c in "\r\n\0"):
                # Never echo the value: it may be the API key.
                raise ValueError(f"header {name.splitlines()[0]!r} has a line break in it")
            lines.append(f"{name}: {value}")
        lines.append("Content-Length: ")
        return Request("\r\n".join(lines).encode("latin-1"), target)

    async def send(self, request: Request, body: bytes) -> Response:
        """Send one request and return its answer; raises :class:`TransportError`, an
        ``OSError`` (refused, TLS) or ``TimeoutError``, never for an HTTP status."""
        if self._closed:
            raise TransportError("the HTTP transport is closed")
        data = request.encode(body)
        try:
            async with asyncio.timeout(self.timeout):
                return await self._send(data)
        except TimeoutError:
            raise TimeoutError(f"no answer within {self.timeout:g} s") from None

    async def _send(self, data: bytes) -> Response:
        slots = self._slots
        if slots is None:
            slots = self._slots = asyncio.Semaphore(self.limit)
        async with slots:
            connection = self._take_idle()
            if connection is None:
                connection = await self._connect()
            done = False
            try:
                response = await connection.request(data)
                done = True
            finally:
                if done and connection.reusable and connection.open and not self._closed:
                    connection.idle_since = asyncio.get_running_loop().time()
                    self._idle.append(connection)
                elif done:
                    connection.close()  # the server asked to close, or we are closing
                else:
                    connection.abort()  # timed out, cancelled or failed: never reused
            return response

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            connection = idle.pop()  # the most recently used: least likely to be timed out
            if connection.open and now - connection.idle_since < self.keepalive:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connection = _Connection(loop, self)
        await loop.create_connection(
            lambda: connection,
            self.host,
            self.port,
            ssl=self._ssl,
            server_hostname=self.host if self._ssl is not None else None,
        )
        self._connections.add(connection)
        if self._closed:  # closed while connecting
            connection.close()
            raise TransportError("the HTTP transport is closed")
        return connection

    def _forget(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        with contextlib.suppress(ValueError):  # not idle: it was in use
            self._idle.remove(connection)

    async def aclose(self) -> None:
        """Close every connection, idle or busy (a busy request fails with TransportError)."""
        self._closed = True
        connections = list(self._connections)
        self._idle.clear()
        for connection in connections:
            connection.close()
        waiting = [c.lost for c in connections if not c.lost.done()]
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=_CLOSE_WAIT)
            for connection in connections:
                if not connection.lost.done():
                    connection.abort()
            if pending:
                await asyncio.wait(pending, timeout=_CLOSE_WAIT)
