"""``ingest demo``: the whole pipeline on this machine, with nothing configured.

An embedded redis-server and the sandbox API start on free loopback ports; a burst of sample
payments (new, renewals, refunds, a free trial, re-sent duplicates, and a few invalid ones
rejected at enqueue) goes through real worker processes; a table shows where every event
ended up. Everything it started is stopped and removed at the end, so it can run again.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .connection import connect
from .embedded import RedisServer
from .errors import ValidationError
from .models import Payment, validate_payment
from .producer import Producer
from .sandbox import DEFAULT_WEBSITE_KEY, Faults, SandboxConfig, SandboxProcess
from .settings import Settings
from .stats import Accounting, read_accounting

# Sample ids the sandbox is told to refuse with a 400, to show dead-lettering with a reason.
REFUSED_IDS = ("demo_refused_1", "demo_refused_2")


def sample_events(count: int, *, rng: random.Random) -> list[dict[str, Any]]:
    """A realistic mix: mostly new payments, some renewals, refunds of earlier payments and a
    free trial. Deterministic for a given ``rng``."""
    now = datetime.now(UTC)
    events: list[dict[str, Any]] = []
    for i in range(count):
        roll = rng.random()
        base: dict[str, Any] = {
            "amount": Decimal(rng.choice(["9.99", "19.00", "29.99", "49.5", "99.00", "249.99"])),
            "currency": rng.choice(["USD", "EUR", "gbp"]),
            "transaction_id": f"demo_{i:06d}",
            "datafast_visitor_id": f"3f1c2a4e-{i:04x}-4c1b-9b7e-{rng.getrandbits(48):012x}",
            "customer_id": f"cus_{rng.getrandbits(32):08x}",
            "timestamp": now - timedelta(seconds=count - i),
        }
        if roll < 0.15:
            base["renewal"] = True
        events.append(base)
        if roll > 0.95 and i > 0:
            refund_of = events[rng.randrange(len(events))]
            events.append({**refund_of, "refunded": True})
    events.append(
        {
            "amount": 0,
            "currency": "USD",
            "transaction_id": "demo_trial_1",
            "datafast_visitor_id": "3f1c2a4e-ffff-4c1b-9b7e-000000000001",
        }
    )
    for tid in REFUSED_IDS:
        events.append({"amount": 5, "currency": "USD", "transaction_id": tid})
    return events


INVALID_EVENTS: list[dict[str, Any]] = [
    {"amount": -10, "currency": "USD", "transaction_id": "demo_bad_amount"},
    {"amount": 10, "currency": "DOLLARS", "transaction_id": "demo_bad_currency"},
    {
        "amount": 10,
        "currency": "USD",
        "transaction_id": "demo_naive_time",
        "timestamp": "2026-05-01T12:00:00",
    },
    {"amount": 10, "currency": "USD", "transaction_id": ""},
]


def run_demo(*, events: int, workers: int, latency_ms: float, timeout: float) -> bool:
    console = Console()
    console.print(
        f"[bold]datafast-ingest demo[/]: {events:,} payments, {workers} worker "
        f"process(es), sandbox answering in {latency_ms:g} ms"
    )
    with RedisServer() as redis_server, SandboxProcess(_sandbox_config(latency_ms)) as sandbox:
        settings = Settings(
            redis_url=redis_server.url,
            api_url=sandbox.url,
            api_key=DEFAULT_WEBSITE_KEY,  # type: ignore[arg-type]
            max_attempts=3,
            backoff_base=0.2,
            backoff_max=1.0,
        )
        console.print(f"  redis   {redis_server.url}  (embedded, removed at the end)")
        console.print(f"  sandbox {sandbox.url}  (local stand-in for the Payments API)")
        connection = connect(settings.redis_url)
        producer = Producer(settings, connection=connection)
        started = time.monotonic()
        rejected = _enqueue_all(console, producer, events)
        processes = [_start_worker(settings, n) for n in range(workers)]
        try:
            final = _watch(console, connection, settings, timeout=timeout)
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        elapsed = time.monotonic() - started
        final = read_accounting(connection, settings.queue)
        sandbox_stats = sandbox.stats()
        connection.close()
    table = _summary_table(final, rejected, elapsed, sandbox_stats)
    console.print(table)
    ok = final.lost == 0 and final.in_system == 0
    console.print("[bold green]nothing lost[/]" if ok else "[bold red]events missing![/]")
    return ok


def _sandbox_config(latency_ms: float) -> SandboxConfig:
    faults = Faults.from_json(
        {
            "latency_ms": latency_ms,
            "fail_ids": {
                tid: {"status": 400, "message": "amount does not match the order"}
                for tid in REFUSED_IDS
            },
        }
    )
    return SandboxConfig(faults=faults)


def _enqueue_all(console: Console, producer: Producer, count: int) -> int:
    rng = random.Random(20261126)
    samples = sample_events(count, rng=rng)
    payments: list[Payment] = [validate_payment(**event) for event in samples]
    receipts = producer.enqueue_many(payments)
    # Re-send a few, as a checkout retrying after a network blip would: reported duplicates.
    again = producer.enqueue_many(payments[:25])
    queued = sum(r.status in ("queued", "deferred") for r in receipts)
    duplicates = sum(r.duplicate for r in again)
    console.print(
        f"  enqueued {queued:,} events in one round trip; re-sent 25: "
        f"{duplicates} reported as duplicates"
    )
    rejected = 0
    for event in INVALID_EVENTS:
        try:
            validate_payment(**event)
        except ValidationError as exc:
            rejected += 1
            console.print(f"  [yellow]rejected at enqueue[/]: {exc}")
    return rejected


def _start_worker(settings: Settings, index: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "INGEST_REDIS_URL": settings.redis_url,
        "INGEST_API_URL": settings.api_url,
        "INGEST_API_KEY": DEFAULT_WEBSITE_KEY,
        "INGEST_MAX_ATTEMPTS": str(settings.max_attempts),
        "INGEST_BACKOFF_BASE": str(settings.backoff_base),
        "INGEST_BACKOFF_MAX": str(settings.backoff_max),
        "INGEST_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "ingest", "worker", "--name", f"demo-{os.getpid()}-{index}"],
        env=env,
    )


def _watch(
    console: Console, connection: redis.Redis, settings: Settings, *, timeout: float
) -> Accounting:
    deadline = time.monotonic() + timeout
    accounting = read_accounting(connection, settings.queue)
    with Progress(
        TextColumn("[bold]delivering"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.0f}/s  dead {task.fields[dead]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("deliver", total=accounting.enqueued, rate=0.0, dead=0)
        started = time.monotonic()
        while time.monotonic() < deadline:
            accounting = read_accounting(connection, settings.queue)
            done = accounting.delivered + accounting.dead
            now = time.monotonic()
            # Average since the workers started: a per-poll rate jumps around on 2 cores.
            rate = accounting.delivered / max(1e-6, now - started)
            progress.update(task, completed=done, rate=rate, dead=accounting.dead)
            if accounting.in_system == 0:
                break
            time.sleep(0.25)
    return accounting


def _summary_table(final: Accounting, rejected: int, elapsed: float, sandbox: Any) -> Table:
    table = Table(title="where every event ended up")
    table.add_column("figure")
    table.add_column("count", justify="right")
    rows = [
        ("enqueued", final.enqueued),
        ("delivered", final.delivered),
        ("  of which the API reported as duplicates", final.api_duplicates),
        ("duplicates refused at enqueue", final.duplicates),
        ("rejected at enqueue (invalid)", rejected),
        ("dead-lettered", final.dead),
        ("still queued / in flight / scheduled", final.in_system),
        ("lost", final.lost),
    ]
    for label, value in rows:
        table.add_row(label, f"{value:,}", style="bold red" if label == "lost" and value else None)
    table.add_row("events/s (enqueue to last delivery)", f"{final.delivered / elapsed:,.0f}")
    recorded = sandbox.get("recorded") if isinstance(sandbox, dict) else None
    if recorded is not None:
        table.add_row("payments the sandbox recorded", f"{recorded:,}")
    return table
