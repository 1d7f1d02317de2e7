"""Drain benchmark: one of our worker processes vs plain RQ, one POST per job.

    python bench/drain.py [--events 10000] [--latency-ms 50] [--concurrency 128]
                          [--baseline-events 300] [--ceiling-seconds 5] [--no-fork]

Everything runs on this machine in one run: an embedded redis-server, the sandbox API in its
own process answering after ``--latency-ms``, then

1. the sandbox's own ceiling (one aiohttp client, ``--concurrency`` connections);
2. ``python -m ingest worker --burst`` draining ``--events`` payments;
3. ``rq worker --burst -w rq.worker.SimpleWorker`` and the forking ``rq.worker.Worker``
   draining ``--baseline-events`` RQ jobs whose function (``bench.baseline_job``) POSTs one
   payment with a plain ``httpx.Client``.

Rates are events per second from the first dequeue to the last event done (start-up left
out; the wall rate, start-up included, is shown too), CPU is the worker process's rusage,
Redis commands are the ``INFO commandstats`` delta. Every process and temporary directory
is removed at the end, on Ctrl+C too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``ingest`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.table import Table

from bench.harness import (
    SYSTEMS,
    BenchEnv,
    DrainRun,
    Interrupted,
    drain,
    install_signal_handlers,
    progress,
    ratio,
    sandbox_ceiling,
    was_interrupted,
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/drain.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=10_000, help="events our worker drains")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="sandbox answer time")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="our worker's INGEST_CONCURRENCY (default: the package default)",
    )
    parser.add_argument(
        "--baseline-events",
        type=int,
        default=300,
        help="jobs each RQ baseline drains (one POST each)",
    )
    parser.add_argument(
        "--ceiling-seconds",
        type=float,
        default=5.0,
        help="seconds to measure the sandbox's ceiling (0 to skip)",
    )
    parser.add_argument("--no-fork", action="store_true", help="skip the forking rq Worker")
    parser.add_argument("--json", type=Path, default=None, help="also save results here")
    return parser.parse_args(argv)


def render(runs: list[DrainRun], ceiling: float | None, concurrency: int, latency: float) -> Table:
    ours = runs[0]
    table = Table(
        title=f"Drain at {latency:g} ms API latency, one worker process each",
        caption="events/s: first dequeue to last done; wall: process start to exit. CPU: the "
        "worker process's rusage (horses included); excl. start-up: from the first dequeue on.",
    )
    for column, justify in (
        ("system", "left"),
        ("events", "right"),
        ("events/s", "right"),
        ("wall ev/s", "right"),
        ("CPU ms/event", "right"),
        ("excl. start-up", "right"),
        ("Redis cmds/event", "right"),
        ("ours/this ev/s", "right"),
        ("this/ours CPU", "right"),
        ("this/ours cmds", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for run in runs:
        mine = run is ours
        table.add_row(
            SYSTEMS[run.system] + (f", {run.concurrency} in flight" if mine else ""),
            f"{run.events:,}",
            f"{run.rate:,.1f}",
            f"{run.wall_rate:,.1f}",
            f"{run.cpu_ms_per_event:.2f}",
            f"{run.steady_cpu_ms_per_event:.2f}",
            f"{run.calls_per_event:.1f}",
            "" if mine else ratio(ours.rate, run.rate),
            "" if mine else ratio(run.cpu_ms_per_event, ours.cpu_ms_per_event),
            "" if mine else ratio(run.calls_per_event, ours.calls_per_event),
        )
    if ceiling is not None:
        table.add_row(
            f"sandbox ceiling ({concurrency} conns, aiohttp)",
            "-",
            f"{ceiling:,.0f}",
            "-",
            "-",
            "-",
            "-",
            ratio(ours.rate, ceiling),
            "",
            "",
            style="dim",
        )
        bound = concurrency / (latency / 1000) if latency > 0 else float("inf")
        if bound != float("inf"):
            table.add_row(
                f"latency bound ({concurrency} in flight / {latency:g} ms)",
                "-",
                f"{bound:,.0f}",
                "-",
                "-",
                "-",
                "-",
                ratio(ours.rate, bound),
                "",
                "",
                style="dim",
            )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    console = Console(width=None if sys.stdout.isatty() else 160)
    runs: list[DrainRun] = []
    ceiling: float | None = None
    try:
        with BenchEnv(latency_ms=args.latency_ms, concurrency=args.concurrency) as env:
            if args.ceiling_seconds > 0:
                progress(f"sandbox ceiling at {env.concurrency} connections...")
                ceiling = sandbox_ceiling(
                    env, seconds=args.ceiling_seconds, connections=env.concurrency
                )
                progress(f"  {ceiling:,.0f} req/s")
            systems = ["ours", "rq-simple"] + ([] if args.no_fork else ["rq-fork"])
            for system in systems:
                n = args.events if system == "ours" else args.baseline_events
                progress(f"{SYSTEMS[system]}: draining {n:,} events...")
                run = drain(env, system, n)
                progress(
                    f"  {run.rate:,.1f} events/s, {run.cpu_ms_per_event:.2f} CPU ms/event, "
                    f"{run.calls_per_event:.1f} Redis cmds/event, "
                    f"{run.sandbox_requests:,} POSTs seen by the sandbox"
                )
                shares = run.as_dict()
                progress(
                    f"  CPU while draining, share of one core: worker "
                    f"{shares['worker_cpu_share']:.0%}, sandbox "
                    f"{shares['sandbox_cpu_share']:.0%}, "
                    f"redis {shares['redis_cpu_share']:.0%}; whole machine "
                    f"{shares['machine_cpu_share']:.0%} of {os.cpu_count()} cores"
                )
                runs.append(run)
            concurrency = env.concurrency
    except BaseException as exc:
        if not (isinstance(exc, KeyboardInterrupt) or was_interrupted()):
            raise
        print("interrupted; every process was stopped", file=sys.stderr)
        return 143 if isinstance(exc, Interrupted) else 130
    console.print(render(runs, ceiling, concurrency, args.latency_ms))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "latency_ms": args.latency_ms,
                    "concurrency": concurrency,
                    "ceiling": ceiling,
                    "runs": [r.as_dict() for r in runs],
                },
                indent=2,
            )
        )
        progress(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
