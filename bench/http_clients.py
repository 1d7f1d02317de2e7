"""Client CPU per POST: our delivery path vs other HTTP clients (issue 17).

    python bench/http_clients.py [--requests 5000] [--concurrency 128] [--latency-ms 50]
                                 [--only NAME ...]

The worker's hot path is one POST per event. This sends the same valid payments to the
sandbox (in its own process) with ``--concurrency`` requests in flight, on the worker's
event loop (uvloop when installed), through

- ``ingest.delivery.PaymentsClient`` over ``build_session`` (what the worker uses);
- aiohttp as PaymentsClient used it before ``ingest.transport``;
- pyreqwest (Rust, its own threads: process CPU counts them) and aiosonic;
- ``ingest.transport.HttpTransport`` on its own (httptools parser, pre-built head);
- a floor with no HTTP at all (what the driver and ``classify`` cost in every row),

every answer classified by the same ``ingest.delivery.classify``, interleaved ``--repeats``
times. It prints requests/s and client CPU ms per request (this process's
``time.process_time``, every thread: the sandbox runs elsewhere). On a 2-core machine the
sandbox, not the client, sets requests/s: compare the CPU column.
pyreqwest and aiosonic are not dependencies: ``pip install pyreqwest aiosonic`` to run them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import yarl
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from bench.harness import install_signal_handlers, make_payments, progress, ratio
from ingest.delivery import PAYMENTS_PATH, PaymentsClient, build_session, classify
from ingest.sandbox import DEFAULT_WEBSITE_KEY, Faults, SandboxConfig, SandboxProcess
from ingest.settings import Settings
from ingest.worker import event_loop_factory

Send = Callable[[str], Awaitable[bool]]


async def drive(bodies: Sequence[str], concurrency: int, send: Send) -> tuple[float, float, int]:
    """Send every body, ``concurrency`` at a time; (seconds, CPU seconds, failures)."""
    it = iter(bodies)
    failures = 0

    async def lane() -> None:
        nonlocal failures
        for body in it:
            if not await send(body):
                failures += 1

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return time.perf_counter() - wall, time.process_time() - cpu, failures


async def run_ours(url: str, bodies: Sequence[str], concurrency: int) -> tuple[float, float, int]:
    settings = Settings(
        api_url=url, api_key=SecretStr(DEFAULT_WEBSITE_KEY), concurrency=concurrency
    )
    client = PaymentsClient(settings, build_session(settings, concurrency=concurrency))
    try:

        async def send(body: str) -> bool:
            return (await client.send(body, None)).verdict.delivered

        return await drive(bodies, concurrency, send)
    finally:
        await client.aclose()


async def run_floor(url: str, bodies: Sequence[str], concurrency: int) -> tuple[float, float, int]:
    """No HTTP: each lane classifies a canned answer after a 50 ms sleep. What this costs
    (the driver, a task switch, classify) is in every row; a client's own cost is its row
    minus this one."""
    payload = b'{"message":"Payment recorded","transaction_id":"pi_1"}'
    got = {"content-type": "application/json", "content-length": str(len(payload))}

    async def send(body: str) -> bool:
        body.encode()
        await asyncio.sleep(0.05)
        return classify(200, payload, got.get("retry-after"), header=got.get).verdict.delivered

    return await drive(bodies, concurrency, send)


async def run_aiohttp(
    url: str, bodies: Sequence[str], concurrency: int
) -> tuple[float, float, int]:
    """The worker's send path before ingest.transport (PaymentsClient over aiohttp, as of
    issue 17): a session built like build_session was, the same headers and classify."""
    headers = {
        "Authorization": f"Bearer {DEFAULT_WEBSITE_KEY}",
        "Content-Type": "application/json",
        "User-Agent": "datafast-ingest/0.1",
    }
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30)
    endpoint = yarl.URL(url + PAYMENTS_PATH)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=10),
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("Accept-Encoding",),
    ) as session:

        async def send(body: str) -> bool:
            try:
                async with session.post(endpoint, data=body.encode(), headers=headers) as r:
                    payload = await r.read()
                    status, got = r.status, r.headers
                    retry_after = got.get("Retry-After")
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                return classify(None, error=type(exc).__name__).verdict.delivered
            return classify(status, payload, retry_after, header=got.get).verdict.delivered

        return await drive(bodies, concurrency, send)


async def run_pyreqwest(
    url: str, bodies: Sequence[str], concurrency: int
) -> tuple[float, float, int]:
    from pyreqwest.client import ClientBuilder
    from pyreqwest.exceptions import PyreqwestError

    endpoint = url + PAYMENTS_PATH
    async with (
        ClientBuilder()
        .max_connections(concurrency)
        .timeout(timedelta(seconds=10))
        .default_headers(
            {
                "Authorization": f"Bearer {DEFAULT_WEBSITE_KEY}",
                "Content-Type": "application/json",
                "User-Agent": "datafast-ingest/0.1",
            }
        )
        .build()
    ) as client:

        async def send(body: str) -> bool:
            try:
                response = await client.post(endpoint).body_bytes(body.encode()).build().send()
                payload = (await response.bytes()).to_bytes()
            except PyreqwestError as exc:
                return classify(None, error=type(exc).__name__).verdict.delivered
            header = response.get_header
            outcome = classify(response.status, payload, header("retry-after"), header=header)
            return outcome.verdict.delivered

        return await drive(bodies, concurrency, send)


async def run_aiosonic(
    url: str, bodies: Sequence[str], concurrency: int
) -> tuple[float, float, int]:
    import aiosonic
    from aiosonic.pools import PoolConfig

    headers = {
        "Authorization": f"Bearer {DEFAULT_WEBSITE_KEY}",
        "Content-Type": "application/json",
        "User-Agent": "datafast-ingest/0.1",
    }
    connector = aiosonic.TCPConnector(
        pool_configs={":default": PoolConfig(size=concurrency, max_conn_requests=None)}
    )
    client = aiosonic.HTTPClient(connector=connector)
    endpoint = url + PAYMENTS_PATH
    try:

        async def send(body: str) -> bool:
            try:
                response = await client.post(endpoint, data=body.encode(), headers=headers)
                payload = await response.content()
            except (aiosonic.exceptions.BaseTimeout, OSError, Exception) as exc:
                return classify(None, error=type(exc).__name__).verdict.delivered
            got = response.headers
            outcome = classify(
                response.status_code, payload, got.get("retry-after"), header=got.get
            )
            return outcome.verdict.delivered

        return await drive(bodies, concurrency, send)
    finally:
        await client.aclose()


async def run_httptools(
    url: str, bodies: Sequence[str], concurrency: int
) -> tuple[float, float, int]:
    """ingest.transport on its own: pre-built head, httptools parser, same classify."""
    from ingest.transport import HttpTransport

    transport = HttpTransport(url, limit=concurrency, timeout=10)
    request = transport.prepare(
        "POST",
        PAYMENTS_PATH,
        {
            "Authorization": f"Bearer {DEFAULT_WEBSITE_KEY}",
            "User-Agent": "datafast-ingest/0.1",
            "Content-Type": "application/json",
        },
    )
    try:

        async def send(body: str) -> bool:
            try:
                response = await transport.send(request, body.encode())
            except (OSError, TimeoutError) as exc:
                return classify(None, error=type(exc).__name__).verdict.delivered
            got = response.headers
            outcome = classify(
                response.status, response.body, got.get("retry-after"), header=got.get
            )
            return outcome.verdict.delivered

        return await drive(bodies, concurrency, send)
    finally:
        await transport.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/http_clients.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--only", action="append", help="run the clients whose name contains this (repeatable)"
    )
    args = parser.parse_args(argv)
    install_signal_handlers()
    every = {
        "ours: PaymentsClient": run_ours,
        "aiohttp (PaymentsClient before #17)": run_aiohttp,
        "pyreqwest": run_pyreqwest,
        "aiosonic": run_aiosonic,
        "httptools (ingest.transport)": run_httptools,
        "floor: no HTTP, classify only": run_floor,
    }
    clients = {
        name: run
        for name, run in every.items()
        if not args.only or any(word in name for word in args.only)
    }
    loop_factory = event_loop_factory()
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in clients}
    try:
        config = SandboxConfig(faults=Faults(latency_ms=args.latency_ms))
        with SandboxProcess(config) as sandbox:
            for rep in range(args.repeats):
                for name, run in clients.items():
                    bodies = [p.wire_body() for p in make_payments(args.requests)]
                    with asyncio.Runner(loop_factory=loop_factory) as runner:
                        seconds, cpu, failed = runner.run(
                            run(sandbox.url, bodies, args.concurrency)
                        )
                    results[name].append((seconds, cpu, failed))
                    progress(
                        f"run {rep + 1}: {name}: {args.requests / seconds:,.0f} req/s, "
                        f"{1000 * cpu / args.requests:.3f} CPU ms/request, {failed} failed"
                    )
                    sandbox.reset()
    except KeyboardInterrupt:
        print("interrupted; the sandbox was stopped", file=sys.stderr)
        return 130
    loop_name = "asyncio" if loop_factory is None else "uvloop"
    table = Table(
        title=f"{args.requests:,} POSTs, {args.concurrency} in flight, {loop_name}, API at "
        f"{args.latency_ms:g} ms: median of {args.repeats} (min-max)"
    )
    floor_name = next((n for n in results if n.startswith("floor")), None)
    floor = (
        0.0
        if floor_name is None
        else statistics.median(1000 * c / args.requests for _, c, _ in results[floor_name])
    )
    for column in ("client", "req/s", "client CPU ms/request", "less floor", "CPU vs ours"):
        table.add_column(column, justify="left" if column == "client" else "right")
    ours_cpu = statistics.median(c for _, c, _ in results[next(iter(clients))])
    for name, runs in results.items():
        rates = [args.requests / s for s, _, _ in runs]
        cpus = [1000 * c / args.requests for _, c, _ in runs]
        table.add_row(
            name,
            f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})",
            f"{statistics.median(cpus):.3f} ({min(cpus):.3f}-{max(cpus):.3f})",
            f"{statistics.median(cpus) - floor:.3f}",
            ratio(statistics.median(cpus), 1000 * ours_cpu / args.requests),
        )
    Console(width=None if sys.stdout.isatty() else 140).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
