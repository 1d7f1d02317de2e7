"""How many POSTs a second the sandbox itself can answer.

Knowing the stand-in's own ceiling keeps a benchmark honest: a worker measured against a
sandbox that tops out at N req/s can never show more than N, whatever its own speed.

    python -m ingest.sandbox.measure --connections 256 --seconds 5 --latency-ms 50
    python -m ingest.sandbox.measure --url http://127.0.0.1:8900

Without ``--url`` it starts a :class:`SandboxProcess` (its own GIL) with the given latency.
The client is one ``aiohttp.ClientSession`` keeping ``connections`` keep-alive connections
busy with valid POSTs of distinct transaction ids; on a small machine that client may be
the limit rather than the server, which is why the server's CPU share is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from .config import DEFAULT_WEBSITE_KEY, SandboxConfig
from .faults import Faults
from .server import SandboxProcess


@dataclass(frozen=True, slots=True)
class Measurement:
    ok: int
    """200 answers completed inside the measured window."""
    failed: int
    """Other answers and errors inside the window."""
    seconds: float
    connections: int

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0


async def measure_async(
    url: str,
    seconds: float,
    connections: int,
    *,
    key: str = DEFAULT_WEBSITE_KEY,
    warmup: float = 0.5,
) -> Measurement:
    """Drive ``url`` (a sandbox base URL) flat out; completions after ``warmup`` count."""
    endpoint = url.rstrip("/") + "/api/v1/payments"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    prefix = uuid.uuid4().hex[:12]
    counter = itertools.count()
    loop = asyncio.get_running_loop()
    window_start = loop.time() + warmup
    window_end = window_start + seconds
    ok = failed = 0

    async def drive(session: aiohttp.ClientSession) -> None:
        nonlocal ok, failed
        while (now := loop.time()) < window_end:
            body = json.dumps(
                {"amount": 9.99, "currency": "USD", "transaction_id": f"{prefix}-{next(counter)}"}
            ).encode()
            try:
                async with session.post(endpoint, data=body, headers=headers) as response:
                    await response.read()
                    success = response.status == 200
            except aiohttp.ClientError:
                success = False
            now = loop.time()
            if window_start <= now <= window_end:
                if success:
                    ok += 1
                else:
                    failed += 1

    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(drive(session) for _ in range(connections)))
    return Measurement(ok=ok, failed=failed, seconds=seconds, connections=connections)


def measure_ceiling(url: str, seconds: float, connections: int) -> float:
    """Successful POSTs per second the sandbox at ``url`` answered at this concurrency."""
    return asyncio.run(measure_async(url, seconds, connections)).rate


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime, fields 14 and 15 of proc(5), counted after the ")" of the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest.sandbox.measure")
    parser.add_argument("--url", help="a running sandbox; default: start one in a child process")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="for the started sandbox")
    args = parser.parse_args(None if argv is None else list(argv))

    if args.url:
        result = asyncio.run(measure_async(args.url, args.seconds, args.connections))
        print(f"{result.rate:,.0f} req/s ok ({result.failed} failed) at {args.connections} conns")
        return 0
    config = SandboxConfig(faults=Faults(latency_ms=args.latency_ms))
    with SandboxProcess(config) as sandbox:
        assert sandbox.pid is not None
        cpu_before, wall_before = _cpu_seconds(sandbox.pid), time.monotonic()
        result = asyncio.run(measure_async(sandbox.url, args.seconds, args.connections))
        cpu_after, wall = _cpu_seconds(sandbox.pid), time.monotonic() - wall_before
        served = sandbox.stats()["requests"]
    # CPU per request holds up on a busy machine where req/s does not: it says what the
    # server could do with a core to itself (1e6 / µs per request = req/s per core).
    cost = ""
    if cpu_before is not None and cpu_after is not None and served:
        cpu = cpu_after - cpu_before
        per_request_us = 1e6 * cpu / served
        cost = (
            f", sandbox CPU {100 * cpu / wall:.0f}%, {per_request_us:.0f} µs/request"
            f" (~{1e6 / per_request_us:,.0f} req/s per core)"
        )
    print(
        f"{result.rate:,.0f} req/s ok ({result.failed} failed) at {args.connections} conns, "
        f"latency {args.latency_ms:g} ms{cost}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
