"""One demo run, top to bottom: start, enqueue, deliver (with faults under ``--chaos``),
count, report, and stop everything it started."""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ingest.connection import redis_unavailable
from ingest.embedded import RedisServer
from ingest.errors import ValidationError
from ingest.models import Payment, validate_payment
from ingest.sandbox import Faults, SandboxConfig, SandboxProcess, StatsView
from ingest.stats import Accounting

from .chaos import LEASE_SECONDS, ErrorAnswers, Fault, chaos_faults
from .report import agreement, demo_console, print_line, rate_line, summary_table, verdict
from .samples import INVALID_EVENTS, REFUSED_IDS, sample_events
from .stack import DemoStack, EventCount, WorkerSettings

DEFAULT_EVENTS = 12_000
"""A few seconds of delivery at the README's per-process rate: enough for a rate to mean
something, short enough for a first command."""
DEFAULT_CHAOS_EVENTS = 6_000
RESENT = 25
_POLL_INTERVAL = 0.2


@dataclass(frozen=True, slots=True)
class DemoOptions:
    events: int = DEFAULT_EVENTS
    workers: int = 2
    latency_ms: float = 50.0
    timeout: float = 300.0
    chaos: bool = False


def run_demo(options: DemoOptions, *, console: Console | None = None) -> bool:
    """Run the demo; True when nothing was lost and everything was delivered or
    dead-lettered in time.

    Raises :class:`~ingest.errors.ConfigurationError` (no redis-server binary) or
    :class:`~ingest.errors.RedisStartError` before printing anything.
    """
    # First, before any output: without a redis-server, the error is all the user sees.
    redis_server = RedisServer(appendonly=options.chaos)
    console = console if console is not None else demo_console()
    faults = chaos_faults() if options.chaos else []
    workdir = Path(tempfile.mkdtemp(prefix="ingest-demo-"))
    ok = False
    try:
        with (
            redis_server,
            (workdir / "sandbox.log").open("wb") as sandbox_log,
            # Its log lines (a SIGKILLed worker's connections reset mid-request) go to a
            # file: the terminal shows the demo's report alone.
            SandboxProcess(_sandbox_config(options, faults), stderr=sandbox_log) as sandbox,
        ):
            stack = DemoStack(redis_server, sandbox, workdir, _worker_settings(options))
            try:
                ok = _run(console, stack, options, faults)
            finally:
                stack.close()
    finally:
        # Kept when something went wrong after the workers started: their logs say what.
        if ok or not any(workdir.glob("demo-*.log")):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            console.print(f"worker and sandbox logs kept in {workdir}")
    return ok


def _run(console: Console, stack: DemoStack, options: DemoOptions, faults: list[Fault]) -> bool:
    _print_header(console, stack, options)
    resent, rejected = _enqueue(console, stack, options.events)
    stack.start_workers(options.workers)
    accounting, timed_out = _deliver(console, stack, faults, timeout=options.timeout)
    stack.stop_workers()
    count = stack.count()
    accounting = _try(stack.accounting) or accounting
    console.print(summary_table(count, accounting, refused_at_enqueue=resent, rejected=rejected))
    print_line(console, agreement(count, accounting))
    print_line(console, rate_line(count))
    if faults:
        stats = stack.sandbox.stats()
        _print_faults(console, faults, count, stats)
    console.print(verdict(count, accounting, timed_out=timed_out), highlight=False)
    return (
        count.lost == 0
        and count.still_queued == 0
        and accounting is not None
        and accounting.lost == 0
    )


def _print_header(console: Console, stack: DemoStack, options: DemoOptions) -> None:
    print_line(
        console,
        f"[bold]datafast-ingest demo[/]: {options.events:,} payments, {options.workers} "
        f"worker{'s' if options.workers != 1 else ''}, API answering in {options.latency_ms:g} ms",
    )
    print_line(console, f"  redis   {stack.redis_server.url}  (embedded, removed at the end)")
    print_line(console, f"  sandbox {stack.sandbox.url}  (local stand-in for the Payments API)")
    if options.chaos:
        print_line(
            console,
            "  [bold]chaos[/]: 5xx and 429 answers, a worker and redis-server SIGKILLed",
        )


def _enqueue(console: Console, stack: DemoStack, count: int) -> tuple[int, int]:
    """Enqueue the samples, re-send a few, show the invalid ones refused; returns how many
    re-sent events were refused as duplicates and how many invalid ones were rejected."""
    payments: list[Payment] = [
        validate_payment(**event) for event in sample_events(count, rng=random.Random(20261126))
    ]
    started = time.perf_counter()
    receipts = stack.enqueue(payments)
    took = time.perf_counter() - started
    queued = sum(r.status in ("queued", "deferred") for r in receipts)
    # A checkout retrying after a network blip sends the same events again.
    again = stack.enqueue(payments[:RESENT])
    print_line(
        console,
        f"  enqueued {queued:,} events in {took * 1000:,.0f} ms; re-sent {RESENT}: "
        f"{sum(r.duplicate for r in again)} reported as duplicates",
    )
    refused: list[ValidationError] = []
    for event in INVALID_EVENTS:
        try:
            validate_payment(**event)
        except ValidationError as exc:
            refused.append(exc)
    print_line(console, f"  [yellow]rejected at enqueue[/], never queued ({len(refused)} invalid):")
    for error in refused:
        # The reason without its hint in parentheses: one short line per event.
        reasons = "; ".join(f"{f}: {r.split(' (')[0]}" for f, r in error.errors.items())
        print_line(console, f"    {reasons}")
    rejected = len(refused)
    duplicates = sum(r.duplicate for r in receipts) + sum(r.duplicate for r in again)
    return duplicates, rejected


def _deliver(
    console: Console, stack: DemoStack, faults: list[Fault], *, timeout: float
) -> tuple[Accounting | None, bool]:
    """Watch the workers deliver, firing each fault when due; the last accounting read and
    whether the timeout ran out first."""
    deadline = time.monotonic() + timeout
    accounting: Accounting | None = None
    first: tuple[float, int] | None = None  # (time, delivered) at the first delivery seen
    with Progress(
        TextColumn("[bold]delivering"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7,.0f}/s  dead {task.fields[dead]}{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("deliver", total=None, rate=0.0, dead=0, note="")
        while time.monotonic() < deadline:
            polled = _try(stack.accounting)
            note = "" if polled is not None else "  (redis down)"
            if polled is not None:
                accounting = polled
                now = time.monotonic()
                if first is None and polled.delivered:
                    first = (now, polled.delivered)
                rate = (
                    0.0
                    if first is None
                    else (polled.delivered - first[1]) / max(1e-6, now - first[0])
                )
                progress.update(
                    task,
                    total=polled.enqueued,
                    completed=polled.delivered + polled.dead,
                    rate=rate,
                    dead=polled.dead,
                )
            progress.update(task, note=note)
            share = 0.0 if accounting is None else _share_done(accounting)
            line = _step_faults(stack, faults, share)
            if line is not None:
                print_line(progress.console, f"  [magenta]chaos[/] {line}")
            if polled is not None and polled.in_system == 0 and all(f.done for f in faults):
                return accounting, False
            time.sleep(_POLL_INTERVAL)
    return accounting, True


def _step_faults(stack: DemoStack, faults: list[Fault], share: float) -> str | None:
    """Step the first fault not done yet: one after another, never two at once (a worker
    is not looked for while redis-server is down)."""
    pending = next((fault for fault in faults if not fault.done), None)
    if pending is None:
        return None
    try:
        return pending.step(stack, share, stack.since_start())
    except (redis.RedisError, OSError) as exc:
        if redis_unavailable(exc):
            return None  # it tries again on the next poll
        raise


def _share_done(accounting: Accounting) -> float:
    return (accounting.delivered + accounting.dead) / max(1, accounting.enqueued)


def _print_faults(
    console: Console, faults: list[Fault], count: EventCount, stats: StatsView
) -> None:
    console.print("faults injected (t = seconds after the workers started):")
    for fault in faults:
        print_line(console, "  " + fault.account(count, stats))


def _try(read: Callable[[], Accounting]) -> Accounting | None:
    try:
        return read()
    except (redis.RedisError, OSError) as exc:
        if redis_unavailable(exc):
            return None
        raise


def _sandbox_config(options: DemoOptions, faults: list[Fault]) -> SandboxConfig:
    settings: dict[str, object] = {
        "latency_ms": options.latency_ms,
        "fail_ids": {
            tid: {"status": 400, "message": "amount does not match the order"}
            for tid in REFUSED_IDS
        },
    }
    for fault in faults:
        if isinstance(fault, ErrorAnswers):
            settings.update(fault.sandbox_faults())
    return SandboxConfig(faults=Faults.from_json(settings))


def _worker_settings(options: DemoOptions) -> WorkerSettings:
    if options.chaos:
        # Enough attempts that only the API's refusals are dead-lettered, backoff short
        # enough that retries land within the run, a short lease for the killed worker, and
        # a request timeout well inside that lease (see README, Guarantees).
        return WorkerSettings(
            max_attempts=12,
            backoff_base=0.2,
            backoff_max=2.0,
            lease_seconds=LEASE_SECONDS,
            request_timeout=1.5,
        )
    return WorkerSettings(max_attempts=3, backoff_base=0.2, backoff_max=1.0)
