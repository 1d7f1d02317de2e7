"""ingest.transport: the worker's HTTP/1.1 client, on the real sandbox and on odd servers.

The sandbox shows answers are classified as before; small asyncio servers in this file
play what the sandbox never does (closing after each answer, never answering, chunked
answers, TLS). Every test runs on asyncio's loop and on uvloop, the worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import trustme

from ingest.delivery import Outcome, PaymentsClient, Verdict, build_session
from ingest.ratelearner import allowed_rate
from ingest.sandbox import DEFAULT_WEBSITE_KEY, FailSpec, SandboxServer
from ingest.settings import Settings
from ingest.transport import HttpTransport, TransportError

pytestmark = pytest.mark.integration

OK = b'{"message":"Payment recorded","transaction_id":"pi_1"}'
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def _loops() -> list[Any]:
    loops: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:  # the worker falls back to asyncio's loop without it
        return loops
    return [*loops, pytest.param(uvloop.new_event_loop, id="uvloop")]


@pytest.fixture(params=_loops())
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    factory: LoopFactory = request.param

    def runner(coro: Awaitable[Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(coro)  # type: ignore[arg-type]

    return runner


def payment(transaction_id: str = "pi_1") -> bytes:
    return json.dumps(
        {"amount": 29.99, "currency": "USD", "transaction_id": transaction_id}
    ).encode()


def settings_for(url: str, **changes: Any) -> Settings:
    fields: dict[str, Any] = {"api_url": url, "api_key": DEFAULT_WEBSITE_KEY}
    fields.update(changes)
    return Settings(**fields)


async def send_once(settings: Settings, transport: HttpTransport | None = None) -> Outcome:
    client = PaymentsClient(settings, transport or build_session(settings, concurrency=4))
    try:
        return await client.send(payment(), None)
    finally:
        await client.aclose()


# -- a raw HTTP server for what the sandbox never does ----------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """Accepts connections on 127.0.0.1 and hands each to ``handler`` with its number."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self._handler = handler
        self._ssl = ssl_context
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._ssl)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        self._writers.add(writer)
        try:
            await self._handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request's head and body, or None at a clean end of the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        self.requests += 1
        return head + body


def answer(status: int = 200, body: bytes = OK, *extra: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def keep_alive(server_answer: bytes, delay: float = 0.0) -> Callable[[RawServer], Handler]:
    """A handler that answers every request on the connection with ``server_answer``."""

    def make(server: RawServer) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            while await server.read_request(r) is not None:
                await asyncio.sleep(delay)
                w.write(server_answer)
                await w.drain()

        return handler

    return make


def serve(make: Callable[[RawServer], Handler], **kwargs: Any) -> RawServer:
    server = RawServer(lambda r, w, n: handler(r, w, n), **kwargs)
    handler = make(server)
    return server


# -- the sandbox: answers classified as before -------------------------------------------------


def test_a_500_from_the_sandbox_is_transient(
    sandbox: SandboxServer, run: Callable[[Awaitable[Any]], Any]
) -> None:
    sandbox.set_faults(fail_ids={"pi_1": FailSpec(500, "boom")})
    outcome = run(send_once(settings_for(sandbox.url)))
    assert (outcome.verdict, outcome.status, outcome.message) == (Verdict.TRANSIENT, 500, "boom")


@pytest.mark.parametrize("fields", ["ietf", "x"])
def test_the_sandbox_rate_limit_fields_reach_allowed_rate(
    sandbox: SandboxServer, run: Callable[[Awaitable[Any]], Any], fields: str
) -> None:
    sandbox.set_faults(rate_limit=40, rate_limit_headers=fields)
    outcome = run(send_once(settings_for(sandbox.url)))
    assert outcome.verdict is Verdict.DELIVERED
    assert outcome.allowed_rate == 40


def test_many_sends_in_flight_reuse_at_most_limit_connections_to_the_sandbox(
    sandbox: SandboxServer, run: Callable[[Awaitable[Any]], Any]
) -> None:
    sandbox.set_faults(latency_ms=20)

    async def go() -> tuple[list[Outcome], int]:
        settings = settings_for(sandbox.url)
        transport = build_session(settings, concurrency=8)
        client = PaymentsClient(settings, transport)
        try:
            outcomes = await asyncio.gather(
                *(client.send(payment(f"pi_{i}"), None) for i in range(40))
            )
            return outcomes, transport.open_connections
        finally:
            await client.aclose()

    outcomes, opened = run(go())
    assert {o.verdict for o in outcomes} == {Verdict.DELIVERED}
    assert opened <= 8
    assert len(sandbox.records()) == 40


# -- odd servers -------------------------------------------------------------------------------


def test_the_pool_never_opens_more_connections_than_its_limit(
    run: Callable[[Awaitable[Any]], Any],
) -> None:
    async def go() -> tuple[set[Verdict], RawServer]:
        async with serve(keep_alive(answer(), delay=0.02)) as server:
            transport = HttpTransport(server.url(), limit=3, timeout=5)
            request = transport.prepare("POST", "/p", {})
            try:
                answers = await asyncio.gather(*(transport.send(request, b"{}") for _ in range(30)))
            finally:
                await transport.aclose()
            return {Verdict.DELIVERED for a in answers if a.status == 200}, server

    verdicts, server = run(go())
    assert verdicts == {Verdict.DELIVERED}
    assert server.requests == 30
    assert server.most_open == 3


def test_a_server_that_closes_after_each_answer_gets_a_fresh_connection_each_time(
    run: Callable[[Awaitable[Any]], Any],
) -> None:
    def make(server: RawServer) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await server.read_request(r)
            w.write(answer(200, OK, "Connection: close"))
            await w.drain()

        return handler

    async def go() -> tuple[list[Outcome], RawServer]:
        async with serve(make) as server:
            settings = settings_for(server.url())
            client = PaymentsClient(settings, build_session(settings, concurrency=2))
            try:
                return [await client.send(payment(), None) for _ in range(3)], server
            finally:
                await client.aclose()

    outcomes, server = run(go())
    assert [o.verdict for o in outcomes] == [Verdict.DELIVERED] * 3
    assert server.connections == 3


def test_a_connection_the_server_closed_while_idle_is_not_reused(
    run: Callable[[Awaitable[Any]], Any],
) -> None:
    def make(server: RawServer) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await server.read_request(r)
            w.write(answer())  # keep-alive, then an idle close, as a load balancer does
            await w.drain()

        return handler

    async def go() -> tuple[list[Outcome], RawServer]:
        async with serve(make) as server:
            settings = settings_for(server.url())
            client = PaymentsClient(settings, build_session(settings, concurrency=2))
            try:
                first = await client.send(payment(), None)
                await asyncio.sleep(0.1)  # the server's close arrives
                return [first, await client.send(payment(), None)], server
            finally:
                await client.aclose()

    outcomes, server = run(go())
    assert [o.verdict for o in outcomes] == [Verdict.DELIVERED] * 2
    assert server.connections == 2


def test_a_connection_idle_longer_than_the_keepalive_is_not_reused(
    run: Callable[[Awaitable[Any]], Any],
) -> None:
    async def go() -> tuple[list[int], RawServer]:
        async with serve(keep_alive(answer())) as server:
            transport = HttpTransport(server.url(), limit=2, timeout=5, keepalive=0.2)
            request = transport.prepare("POST", "/p", {})
            try:
                first = await transport.send(request, b"{}")
                await asyncio.sleep(0.3)
                return [first.status, (await transport.send(request, b"{}")).status], server
            finally:
                await transport.aclose()

    statuses, server = run(go())
    assert statuses == [200, 200]
    assert server.connections == 2


def test_a_connection_closed_unanswered_is_a_transient_failure_never_resent(
    run: Callable[[Awaitable[Any]], Any],
) -> None:
    # The server may have read the request: a resend would be an attempt nobody counted.
    def make(server: RawServer) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await server.read_request(r)  # and close without a byte of answer

        return handler

    async def go() -> tuple[Outcome, RawServer]:
        async with serve(make) as server:
            settings = settings_for(server.url())
            client = PaymentsClient(settings, build_session(settings, concurrency=2))
            try:
                return await client.send(payment(), None), server
            finally:
                await client.aclose()

    outcome, server = run(go())
    assert (outcome.verdict, outcome.status) == (Verdict.TRANSIENT, None)
    assert (server.connections, server.requests) == (1, 1)


@pytest.mark.timeout(10)
def test_a_server_that_never_answers_times_out_within_the_request_timeout(
    run: Callable[[Awaitable[Any]], Any],
) -> None:
    def make(server: RawServer) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await server.read_request(r)
            await r.read()  # never answers; returns when the client gives up

        return handler

    async def go() -> tuple[Outcome, float, RawServer]:
        async with serve(make) as server:
            started = time.monotonic()
            outcome = await send_once(settings_for(server.url(), request_timeout=0.5))
            return outcome, time.monotonic() - started, server

    outcome, elapsed, server = run(go())
    assert (outcome.verdict, outcome.status) == (Verdict.TRANSIENT, None)
    assert "TimeoutError" in outcome.message
    assert 0.5 <= elapsed < 1.5
    assert server.open == 0  # the timed-out connection was closed


@pytest.mark.timeout(10)
def test_a_timed_out_connection_is_never_reused(run: Callable[[Awaitable[Any]], Any]) -> None:
    def make(server: RawServer) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            while await server.read_request(r) is not None:
                if n == 1:
                    await asyncio.sleep(0.6)  # the first connection answers too late
                w.write(answer())
                await w.drain()

        return handler

    async def go() -> tuple[list[Outcome], RawServer]:
        async with serve(make) as server:
            settings = settings_for(server.url(), request_timeout=0.3)
            client = PaymentsClient(settings, build_session(settings, concurrency=1))
            try:
                late = await client.send(payment(), None)
                return [late, await client.send(payment(), None)], server
            finally:
                await client.aclose()

    (late, fresh), server = run(go())
    assert (late.verdict, late.status) == (Verdict.TRANSIENT, None)
    assert fresh.verdict is Verdict.DELIVERED
    assert server.connections == 2


@pytest.mark.timeout(10)
def test_waiting_for_a_pooled_connection_counts_against_the_timeout(
    run: Callable[[Awaitable[Any]], Any],
) -> None:
    async def go() -> tuple[list[Outcome], float]:
        async with serve(keep_alive(answer(), delay=5)) as server:
            settings = settings_for(server.url(), request_timeout=0.4)
            client = PaymentsClient(settings, build_session(settings, concurrency=1))
            started = time.monotonic()
            try:
                outcomes = await asyncio.gather(*(client.send(payment(), None) for _ in range(2)))
                return outcomes, time.monotonic() - started
            finally:
                await client.aclose()

    outcomes, elapsed = run(go())
    assert [(o.verdict, o.status) for o in outcomes] == [(Verdict.TRANSIENT, None)] * 2
    assert elapsed < 1.2


def test_a_refused_connection_is_a_transient_transport_failure(
    run: Callable[[Awaitable[Any]], Any],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcome = run(send_once(settings_for(f"http://127.0.0.1:{port}")))
    assert (outcome.verdict, outcome.status) == (Verdict.TRANSIENT, None)
    assert "ConnectionRefused" in outcome.message or "Errno 111" in outcome.message


def test_a_connection_dropped_before_the_answer_is_a_transient_transport_failure(
    run: Callable[[Awaitable[Any]], Any],
) -> None:
    def make(server: RawServer) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await server.read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{")  # then gone

        return handler

    async def go() -> Outcome:
        async with serve(make) as server:
            return await send_once(settings_for(server.url()))

    outcome = run(go())
    assert (outcome.verdict, outcome.status) == (Verdict.TRANSIENT, None)
    assert "closed the connection" in outcome.message


def test_a_chunked_answer_is_read_whole(run: Callable[[Awaitable[Any]], Any]) -> None:
    def make(server: RawServer) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            while await server.read_request(r) is not None:
                w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for part in (OK[:10], OK[10:]):
                    w.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await w.drain()
                    await asyncio.sleep(0.01)  # arrives in separate reads
                w.write(b"0\r\n\r\n")

        return handler

    async def go() -> tuple[list[Outcome], RawServer]:
        async with serve(make) as server:
            settings = settings_for(server.url())
            client = PaymentsClient(settings, build_session(settings, concurrency=1))
            try:
                return [await client.send(payment(), None) for _ in range(2)], server
            finally:
                await client.aclose()

    outcomes, server = run(go())
    assert [(o.verdict, o.message) for o in outcomes] == [
        (Verdict.DELIVERED, "Payment recorded")
    ] * 2
    assert server.connections == 1  # kept alive after a chunked answer


def test_an_answer_without_length_ends_when_the_server_closes(
    run: Callable[[Awaitable[Any]], Any],
) -> None:
    def make(server: RawServer) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await server.read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + OK)

        return handler

    async def go() -> Outcome:
        async with serve(make) as server:
            return await send_once(settings_for(server.url()))

    outcome = run(go())
    assert (outcome.verdict, outcome.message) == (Verdict.DELIVERED, "Payment recorded")


def test_answer_headers_are_found_whatever_their_case(
    run: Callable[[Awaitable[Any]], Any],
) -> None:
    throttled = answer(429, b"{}", "rETRY-aFTER: 7", "X-RATELIMIT-LIMIT: 5")

    async def go() -> Outcome:
        async with serve(keep_alive(throttled)) as server:
            return await send_once(settings_for(server.url()))

    outcome = run(go())
    assert (outcome.verdict, outcome.status, outcome.retry_after) == (Verdict.TRANSIENT, 429, 7)
    assert outcome.allowed_rate == 5
    assert allowed_rate({"x-ratelimit-limit": "5"}.get) == 5


def test_aclose_closes_every_connection(run: Callable[[Awaitable[Any]], Any]) -> None:
    async def go() -> tuple[int, int, RawServer, Outcome]:
        async with serve(keep_alive(answer(), delay=0.05)) as server:
            settings = settings_for(server.url())
            transport = build_session(settings, concurrency=4)
            client = PaymentsClient(settings, transport)
            await asyncio.gather(*(client.send(payment(), None) for _ in range(4)))
            opened = transport.open_connections
            await client.aclose()
            await asyncio.sleep(0.05)  # the server sees the ends
            after = await client.send(payment(), None)
            return opened, transport.open_connections, server, after

    opened, left, server, after = run(go())
    assert (opened, left, server.open) == (4, 0, 0)
    assert (after.verdict, after.status) == (Verdict.TRANSIENT, None)


# -- https -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server_context(ca: trustme.CA) -> Iterator[tuple[ssl.SSLContext, list[str | None]]]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    names: list[str | None] = []

    def note_sni(sock: Any, name: str | None, ctx: Any) -> None:
        names.append(name)

    context.sni_callback = note_sni
    return context, names


def test_https_is_refused_when_the_certificate_is_not_trusted(
    tls_server_context: tuple[ssl.SSLContext, list[str | None]],
    run: Callable[[Awaitable[Any]], Any],
) -> None:
    async def go() -> Outcome:
        async with serve(keep_alive(answer()), ssl_context=tls_server_context[0]) as server:
            return await send_once(settings_for(server.url("https", "localhost")))

    outcome = run(go())
    assert (outcome.verdict, outcome.status) == (Verdict.TRANSIENT, None)
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.message


def test_https_delivers_with_the_ca_trusted_and_names_the_host(
    ca: trustme.CA,
    tls_server_context: tuple[ssl.SSLContext, list[str | None]],
    run: Callable[[Awaitable[Any]], Any],
) -> None:
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    server_context, names = tls_server_context

    async def go() -> list[Outcome]:
        async with serve(keep_alive(answer()), ssl_context=server_context) as server:
            settings = settings_for(server.url("https", "localhost"))
            transport = HttpTransport(settings.api_url, limit=2, timeout=5, ssl_context=trusting)
            client = PaymentsClient(settings, transport)
            try:
                return [await client.send(payment(), None) for _ in range(2)]
            finally:
                await client.aclose()

    outcomes = run(go())
    assert [o.verdict for o in outcomes] == [Verdict.DELIVERED] * 2
    assert names == ["localhost"]  # SNI sent, and the connection kept alive


# -- secrets -----------------------------------------------------------------------------------


def test_no_error_or_repr_shows_the_api_key(run: Callable[[Awaitable[Any]], Any]) -> None:
    def make(server: RawServer) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            request = await server.read_request(r)
            assert request is not None
            assert DEFAULT_WEBSITE_KEY.encode() in request
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: nonsense\r\n\r\n")  # unparsable

        return handler

    async def go() -> tuple[list[str], list[str]]:
        async with serve(make) as server:
            settings = settings_for(server.url(), request_timeout=0.5)
            transport = build_session(settings, concurrency=1)
            client = PaymentsClient(settings, transport)
            request = transport.prepare(
                "POST", "/p", {"Authorization": "Bearer " + DEFAULT_WEBSITE_KEY}
            )
            try:
                outcome = await client.send(payment(), None)
                reprs = [repr(client), repr(transport), repr(request), repr(outcome)]
                errors = [outcome.message]
                try:
                    await transport.send(request, b"{}")
                except TransportError as exc:
                    errors += [str(exc), repr(exc), repr(exc.__cause__)]
                return reprs, errors
            finally:
                await client.aclose()

    reprs, errors = run(go())
    assert "malformed answer" in errors[0]
    for text in reprs + errors:
        assert DEFAULT_WEBSITE_KEY not in text
        assert "Authorization" not in text


def test_a_header_with_a_line_break_is_refused_without_showing_its_value() -> None:
    transport = HttpTransport("http://127.0.0.1:1", limit=1, timeout=1)
    with pytest.raises(ValueError) as raised:
        transport.prepare("POST", "/p", {"Authorization": "Bearer secret\r\nX-Evil: 1"})
    assert "secret" not in str(raised.value)
