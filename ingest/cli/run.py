"""The commands that run something until stopped: a worker, the sandbox, the demo."""

from __future__ import annotations

import click

from ._common import EXIT_FAILURE, EXIT_OK, load_settings, open_redis


@click.command(help="Drain the queue and deliver payments (python worker.py is the same).")
@click.option("--burst", is_flag=True, help="Stop when nothing is queued, in flight or scheduled.")
@click.option("--concurrency", type=int, default=None, help="Override INGEST_CONCURRENCY.")
@click.option("--name", default=None, help="Worker name shown by `rq info` (default: random).")
def worker(burst: bool, concurrency: int | None, name: str | None) -> None:
    from ingest.logs import configure_logging
    from ingest.worker import run_worker

    settings = load_settings(concurrency=concurrency)
    configure_logging(settings.log_level)
    # Fail in one line at start when Redis is unreachable; once running, the worker rides
    # out outages by itself.
    open_redis(settings).close()
    run_worker(settings, burst=burst, name=name)


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
    help="Run the local stand-in for the Payments API (see `ingest sandbox --help`).",
)
@click.pass_context
def sandbox(ctx: click.Context) -> None:
    from ingest.sandbox import main as sandbox_main

    raise SystemExit(sandbox_main(list(ctx.args)))


@click.command(help="Embedded Redis + local sandbox API + workers: send a burst and watch it land.")
@click.option(
    "--events",
    type=click.IntRange(min=1),
    default=None,
    help="Sample payments to enqueue (refunds and a few refused ones come on top).  "
    "[default: 12000; 6000 with --chaos]",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Worker processes."
)
@click.option(
    "--latency-ms",
    type=float,
    default=50.0,
    show_default=True,
    help="Sandbox answer time per request.",
)
@click.option(
    "--timeout",
    type=float,
    default=300.0,
    show_default=True,
    help="Give up waiting for deliveries after this many seconds.",
)
@click.option(
    "--chaos",
    is_flag=True,
    help="The same run while the sandbox answers 500/503 and 429s, one worker is SIGKILLed "
    "and redis-server is killed and restarted; ends with the same table.",
)
def demo(events: int | None, workers: int, latency_ms: float, timeout: float, chaos: bool) -> None:
    from ingest.demo import DEFAULT_CHAOS_EVENTS, DEFAULT_EVENTS, DemoOptions, run_demo

    if chaos and workers < 2:
        raise click.BadParameter(
            "--chaos SIGKILLs one worker and needs another to finish: 2 or more",
            param_hint="--workers",
        )
    if events is None:
        events = DEFAULT_CHAOS_EVENTS if chaos else DEFAULT_EVENTS
    options = DemoOptions(
        events=events, workers=workers, latency_ms=latency_ms, timeout=timeout, chaos=chaos
    )
    raise SystemExit(EXIT_OK if run_demo(options) else EXIT_FAILURE)
