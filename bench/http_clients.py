"""Client CPU per POST: our delivery path vs a bare aiohttp loop.

    python bench/http_clients.py [--requests 5000] [--concurrency 128] [--latency-ms 50]

The worker's hot path is one POST per event. This sends the same valid payments to the
sandbox (in its own process) with ``--concurrency`` requests in flight, through

- ``ingest.delivery.PaymentsClient`` over ``build_session`` (what the worker uses), and
- one ``aiohttp.ClientSession`` (same connection limit), answers classified by the same
  ``ingest.delivery.classify``,

interleaved ``--repeats`` times, and prints requests/s and client CPU ms per request (this
process's ``time.process_time``: the sandbox runs elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from bench.harness import install_signal_handlers, make_payments, progress, ratio
from ingest.delivery import PAYMENTS_PATH, PaymentsClient, build_session, classify
from ingest.sandbox import DEFAULT_WEBSITE_KEY, Faults, SandboxConfig, SandboxProcess
from ingest.settings import Settings

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


async def run_aiohttp(
    url: str, bodies: Sequence[str], concurrency: int
) -> tuple[float, float, int]:
    headers = {
        "Authorization": f"Bearer {DEFAULT_WEBSITE_KEY}",
        "Content-Type": "application/json",
        "User-Agent": "datafast-ingest/0.1",
    }
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=10)
    endpoint = url + PAYMENTS_PATH
    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=timeout
    ) as session:

        async def send(body: str) -> bool:
            try:
                async with session.post(endpoint, data=body.encode()) as response:
                    payload = await response.read()
                    outcome = classify(
                        response.status, payload, response.headers.get("retry-after")
                    )
            except (aiohttp.ClientError, OSError) as exc:
                outcome = classify(None, error=type(exc).__name__)
            return outcome.verdict.delivered

        return await drive(bodies, concurrency, send)


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
    args = parser.parse_args(argv)
    install_signal_handlers()
    clients = {
        "ours: PaymentsClient": run_ours,
        "plain aiohttp.ClientSession": run_aiohttp,
    }
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in clients}
    try:
        config = SandboxConfig(faults=Faults(latency_ms=args.latency_ms))
        with SandboxProcess(config) as sandbox:
            for rep in range(args.repeats):
                for name, run in clients.items():
                    bodies = [p.wire_body() for p in make_payments(args.requests)]
                    seconds, cpu, failed = asyncio.run(run(sandbox.url, bodies, args.concurrency))
                    results[name].append((seconds, cpu, failed))
                    progress(
                        f"run {rep + 1}: {name}: {args.requests / seconds:,.0f} req/s, "
                        f"{1000 * cpu / args.requests:.3f} CPU ms/request, {failed} failed"
                    )
                    sandbox.reset()
    except KeyboardInterrupt:
        print("interrupted; the sandbox was stopped", file=sys.stderr)
        return 130
    table = Table(
        title=f"{args.requests:,} POSTs, {args.concurrency} in flight, API at "
        f"{args.latency_ms:g} ms: median of {args.repeats} (min-max)"
    )
    for column in ("client", "req/s", "client CPU ms/request", "CPU vs ours"):
        table.add_column(column, justify="left" if column == "client" else "right")
    ours_cpu = statistics.median(c for _, c, _ in results[next(iter(clients))])
    for name, runs in results.items():
        rates = [args.requests / s for s, _, _ in runs]
        cpus = [1000 * c / args.requests for _, c, _ in runs]
        table.add_row(
            name,
            f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})",
            f"{statistics.median(cpus):.3f} ({min(cpus):.3f}-{max(cpus):.3f})",
            ratio(statistics.median(cpus), 1000 * ours_cpu / args.requests),
        )
    Console(width=None if sys.stdout.isatty() else 140).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
