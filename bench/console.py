"""Console benchmark: the dead-letter page with a large store, and the console's memory.

    python bench/console.py [--letters 100000] [--requests 40] [--budget-ms 200] [--budget-mb 150]

Everything runs on this machine: an embedded redis-server (never 6379) filled with
``--letters`` realistic dead letters (rejected after one attempt, or exhausted after 12,
spread over 30 days and 20 websites), then ``python -m ingest.console`` as its own process,
as an operator would run it. Each page is requested ``--requests`` times over HTTP after
one warm-up request; the table shows the median, 95th percentile and maximum latency as the
client sees it, and the console's resident memory (``VmRSS``, and ``VmHWM``, its peak) read
from ``/proc``. Exit status 1 when the dead-letter page's p95 or the peak RSS is over budget.

A benchmark, run by hand: not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``ingest`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import redis
from rich.console import Console
from rich.table import Table

from ingest import keys
from ingest.embedded import RedisServer
from ingest.models import event_id
from ingest.timestamps import utc_iso

QUEUE = "payments"
PROJECT = Path(__file__).resolve().parent.parent
console = Console(stderr=True, highlight=False)


def dead_record(n: int, dead_at: float) -> tuple[str, str]:
    """A dead letter as the worker writes it (``ingest.deadletter.dead_record``)."""
    website = f"{n % 20:024x}"
    transaction_id = f"ord_{n:07d}"
    exhausted = n % 5 == 0
    status = 503 if exhausted else (400, 404, 409, 422)[n % 4]
    error = "upstream unavailable" if exhausted else "invalid payment: currency not supported"
    body = json.dumps(
        {
            "amount": 29.99,
            "currency": "USD",
            "transaction_id": transaction_id,
            "datafast_visitor_id": f"3f1c2a4e-{n % 65536:04x}-4c1b-9b7e-000000000000",
            "email": f"buyer{n}@example.com",
            "name": "Ada Lovelace",
            "customer_id": f"cus_{n}",
            "renewal": False,
            "refunded": False,
            "is_free_trial": False,
            "timestamp": utc_iso(dead_at - 3600),
        },
        separators=(",", ":"),
    )
    job_id = event_id(website, transaction_id, refunded=False)
    history = [
        {"at": utc_iso(dead_at - 60 * (11 - a)), "status": status, "error": error}
        for a in range(12 if exhausted else 1)
    ]
    record = {
        "job_id": job_id,
        "transaction_id": transaction_id,
        "website": website,
        "data": json.dumps(["ingest.delivery.deliver", None, [body, website], {}]),
        "reason": "exhausted" if exhausted else "rejected",
        "status": status,
        "error": error,
        "attempts": len(history),
        "first_attempt_at": history[0]["at"],
        "last_attempt_at": history[-1]["at"],
        "dead_at": utc_iso(dead_at),
        "history": history,
        "history_json": json.dumps(history),
    }
    return job_id, json.dumps(record)


def fill(client: redis.Redis, letters: int) -> list[str]:
    k = keys.QueueKeys(QUEUE)
    now = time.time()
    ids: list[str] = []
    for start in range(0, letters, 2000):
        with client.pipeline(transaction=False) as pipe:
            for n in range(start, min(letters, start + 2000)):
                dead_at = now - 30 * 86400 * (1 - n / letters)
                job_id, record = dead_record(n, dead_at)
                pipe.hset(k.dead, job_id, record)
                pipe.zadd(k.dead_index, {job_id: dead_at})
                ids.append(job_id)
            pipe.execute()
    client.hset(k.stats, mapping={"enqueued": letters, "dead_lettered": letters})
    return ids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) / 1024
    return out


def timed(client: httpx.Client, path: str, n: int) -> list[float]:
    answer = client.get(path)  # warm-up
    answer.raise_for_status()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        answer = client.get(path)
        samples.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--letters", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--budget-ms", type=float, default=200.0)
    parser.add_argument("--budget-mb", type=float, default=150.0)
    args = parser.parse_args(argv)

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        started = time.perf_counter()
        ids = fill(client, args.letters)
        used = client.info("memory")["used_memory_human"]
        console.print(
            f"filled {args.letters:,} dead letters in {time.perf_counter() - started:.1f} s "
            f"(redis uses {used})"
        )
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
        env.update(INGEST_REDIS_URL=server.url, INGEST_QUEUE=QUEUE, INGEST_LOG_LEVEL="WARNING")
        process = subprocess.Popen(
            [sys.executable, "-m", "ingest.console", "--port", str(port)], env=env, cwd=PROJECT
        )
        try:
            return run(process, port, ids, args)
        finally:
            process.terminate()
            process.wait(10)
            client.close()


def run(
    process: subprocess.Popen[bytes], port: int, ids: list[str], args: argparse.Namespace
) -> int:
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=120) as http:
        deadline = time.monotonic() + 30
        while True:
            try:
                http.get("/api/session").raise_for_status()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        console.print(f"console up (pid {process.pid}), RSS {memory(process.pid)['VmRSS']:.0f} MB")
        # Right after start the index is still being read in the background: the
        # unfiltered page must not wait for it (it shows no counts until then).
        started = time.perf_counter()
        http.get("/dead-letters").raise_for_status()
        cold_page = (time.perf_counter() - started) * 1000
        console.print(f"unfiltered page while the index is read: {cold_page:.0f} ms")
        started = time.perf_counter()
        http.get("/dead-letters?reason=exhausted").raise_for_status()
        cold = (time.perf_counter() - started) * 1000
        console.print(f"first filtered page (reads the index of {len(ids):,}): {cold:.0f} ms")

        since = datetime.fromtimestamp(time.time() - 86400, UTC).strftime("%Y-%m-%dT%H:%M")
        pages = {
            "/dead-letters (page 1, counts)": "/dead-letters",
            "/dead-letters last page": f"/dead-letters?offset={len(ids) - 50}",
            "/dead-letters?reason=exhausted": "/dead-letters?reason=exhausted",
            "/dead-letters?status=422 page 100": "/dead-letters?status=422&offset=4950",
            "/dead-letters?website=…&reason": f"/dead-letters?website={3:024x}&reason=rejected",
            "/dead-letters?q=ord_00999 (search)": "/dead-letters?q=ord_00999",
            "/dead-letters since 24 h": f"/dead-letters?since={since}",
            "/api/dead-letters?reason=rejected": "/api/dead-letters?reason=rejected",
            "/dead-letters/{id}": f"/dead-letters/{ids[len(ids) // 2]}",
            "/ (overview)": "/",
            "/replay?reason=exhausted (dry run)": "/replay?reason=exhausted",
        }
        results = {label: timed(http, path, args.requests) for label, path in pages.items()}

        # A replay changes the store: the next page re-reads the index's ids (not records).
        session = http.get("/api/session").json()
        http.post(
            "/api/replay",
            json={"ids": ids[:100], "confirm": True},
            headers={"Origin": base, "X-CSRF-Token": session["csrf_token"]},
        ).raise_for_status()
        started = time.perf_counter()
        http.get("/dead-letters?reason=exhausted").raise_for_status()
        after_replay = (time.perf_counter() - started) * 1000
        mem = memory(process.pid)

    table = Table(title=f"console with {len(ids):,} dead letters ({args.requests} requests each)")
    for column in ("page", "p50 ms", "p95 ms", "max ms"):
        table.add_column(column, justify="left" if column == "page" else "right")
    worst = 0.0
    for label, samples in results.items():
        p95 = statistics.quantiles(samples, n=20)[18]
        if label.startswith(("/dead-letters", "/api/dead-letters")):
            worst = max(worst, p95)
        table.add_row(
            label, f"{statistics.median(samples):.1f}", f"{p95:.1f}", f"{max(samples):.1f}"
        )
    Console().print(table)
    Console().print(
        f"right after start: unfiltered page {cold_page:.0f} ms, first filtered page "
        f"{cold:.0f} ms (waits for the index); first filtered page after a "
        f"replay of 100: {after_replay:.0f} ms\n"
        f"console RSS now {mem['VmRSS']:.1f} MB, peak {mem['VmHWM']:.1f} MB "
        f"(budget {args.budget_mb:.0f} MB); worst dead-letter p95 {worst:.1f} ms "
        f"(budget {args.budget_ms:.0f} ms)"
    )
    ok = worst < args.budget_ms and mem["VmHWM"] < args.budget_mb
    Console().print("[green]within budget[/]" if ok else "[red]OVER BUDGET[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
