"""Issue 17's targets, before and after, measured in ONE run: one table with a ratio per row.

    python -m bench.perf17 --before DIR [--after DIR] [--events 8000] [--repeats 2]
                           [--backlog] [--before-env NAME=VALUE] [--after-env NAME=VALUE]
                           [--json FILE]

``--before`` is a checkout of the code to compare against (for example
``git worktree add --detach ../before main``); ``--after`` defaults to this checkout. Both
run on the same embedded redis-server and sandbox, their runs interleaved (before, after,
before, after...) so the machine's noise falls on both alike; every worker process runs
the code of its checkout (its directory is the working directory and first on
``PYTHONPATH``) in this interpreter, so both use the same installed libraries.

Rows (medians of ``--repeats``):

1. drain at 50 ms, one worker process: events/s, worker CPU per event (from the first
   dequeue), Redis commands and Redis CPU per event (``INFO`` ``used_cpu_user`` +
   ``used_cpu_sys`` delta over the drain), and the CPU shares of worker, sandbox and Redis
   (one core = 100%) and of the whole machine (2 cores = 200%): the sandbox must not be the
   ceiling; from a cold start (the send rate slow-starts from 30/s), and again with the
   rate already learned (``learned`` rows: ``INGEST_SEND_RATE_INITIAL=10000`` stands in
   for the state a fleet that ran before keeps in Redis for a day);
2. four worker processes against one Redis: events/s and Redis CPU share, and the events/s
   one Redis primary would carry at 100% of a core from the Redis CPU per event;
3. enqueue: ``enqueue_payment`` p50 / p99 and its p50 over a raw ``LPUSH`` of the same job
   data, measured in one process per checkout;
4. SIGKILL recovery at default settings: one worker delivering, a second one killed with
   SIGKILL mid-drain; seconds until the killed worker's events are back on the queue, and
   how many events of the live worker were put back (must be 0);
5. with ``--backlog``: a 100,000-event backlog drained by 2 processes at 50 ms.

The default run takes about 4-5 minutes on a quiet 2-core machine; ``--backlog`` adds ~3.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
from rich.console import Console
from rich.table import Table

from bench.harness import (
    BENCH_DIR,
    OUR_QUEUE,
    PROJECT_DIR,
    PYTHON,
    BenchEnv,
    drain,
    enqueue_ours,
    install_signal_handlers,
    make_payments,
    progress,
)

LATENCY_MS = 50.0


def redis_cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


@dataclass
class Figures:
    """Every sample of every figure, per side ("before", "after")."""

    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, side: str, name: str, value: float) -> None:
        self.samples.setdefault(name, {}).setdefault(side, []).append(value)

    def median(self, side: str, name: str) -> float | None:
        values = self.samples.get(name, {}).get(side)
        return statistics.median(values) if values else None


def drain_figures(
    env: BenchEnv, figures: Figures, side: str, events: int, processes: int, label: str = ""
) -> None:
    env.fresh()
    enqueue_ours(env, make_payments(events))
    cpu_before = redis_cpu(env.r)
    run = drain(env, "ours", events, processes=processes, fill=False)
    redis_cpu_s = redis_cpu(env.r) - cpu_before
    d = run.as_dict()
    tag = f"{processes}p{label}"
    figures.add(side, f"{tag} events/s", run.rate)
    figures.add(side, f"{tag} worker CPU ms/event", run.steady_cpu_ms_per_event)
    figures.add(side, f"{tag} Redis cmds/event", run.calls_per_event)
    figures.add(side, f"{tag} Redis CPU us/event", 1e6 * redis_cpu_s / events)
    figures.add(side, f"{tag} worker CPU share", 100 * d["worker_cpu_share"])
    figures.add(side, f"{tag} sandbox CPU share", 100 * d["sandbox_cpu_share"])
    figures.add(side, f"{tag} Redis CPU share", 100 * d["redis_cpu_share"])
    figures.add(side, f"{tag} machine CPU share", 100 * d["machine_cpu_share"])
    progress(
        f"  {side}, {processes} process(es): {run.rate:,.0f} events/s, "
        f"{run.steady_cpu_ms_per_event:.3f} worker CPU ms/event, "
        f"{1e6 * redis_cpu_s / events:.1f} Redis CPU us/event; CPU shares: worker "
        f"{d['worker_cpu_share']:.0%}, sandbox {d['sandbox_cpu_share']:.0%}, redis "
        f"{d['redis_cpu_share']:.0%}, machine {d['machine_cpu_share']:.0%}; "
        f"load {load_average()}"
    )


def enqueue_figures(env: BenchEnv, figures: Figures, side: str, tree: Path, ops: int) -> None:
    env.fresh()
    child_env = env.base_env()
    spool = [side, str(env.tmp / "spool")]
    result = subprocess.run(
        [PYTHON, str(BENCH_DIR / "perf17_enqueue.py"), env.redis_url, str(ops), "10", *spool],
        env=child_env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    r = json.loads(result.stdout.strip().splitlines()[-1])
    figures.add(side, "enqueue_payment p50 us", r["p50"])
    figures.add(side, "enqueue_payment p99 us", r["p99"])
    figures.add(side, "raw LPUSH p50 us", r["lpush_p50"])
    figures.add(side, "enqueue p50 / LPUSH p50", r["p50"] / r["lpush_p50"])
    figures.add(side, "enqueue_payment CPU us", r["cpu"])
    figures.add(side, "enqueue CPU / LPUSH CPU", r["cpu"] / r["lpush_cpu"])
    progress(
        f"  {side}: enqueue_payment p50 {r['p50']:.0f} us, p99 {r['p99']:.0f} us; raw LPUSH "
        f"p50 {r['lpush_p50']:.0f} us: {r['p50'] / r['lpush_p50']:.2f}x; CPU per call "
        f"{r['cpu']:.0f} us vs LPUSH {r['lpush_cpu']:.0f} us"
    )


def recovery_figures(env: BenchEnv, figures: Figures, side: str, events: int) -> None:
    """A live worker and a victim drain at default settings; the victim is SIGKILLed."""
    env.fresh()
    enqueue_ours(env, make_payments(events))
    argv, child_env = env.ours_argv()
    argv = [a for a in argv if a != "--burst"]
    wip = f"rq:wip:{OUR_QUEUE}"
    logs = []
    procs = {}
    for name in ("live", "victim"):
        log = env.tmp / f"recovery-{side}-{name}-{time.monotonic_ns()}.log"
        logs.append(log)
        procs[name] = env.children.spawn(
            [*argv, "--name", name], env=child_env, log=log, cwd=env.tree
        )
    try:
        deadline = time.monotonic() + 60
        while int(env.r.hget(f"ingest:{OUR_QUEUE}:stats", "delivered") or 0) < 2000:
            if time.monotonic() > deadline:
                raise RuntimeError("recovery: no deliveries within 60 s")
            time.sleep(0.05)
        os.killpg(procs["victim"].pid, signal.SIGKILL)
        killed = time.monotonic()
        procs["victim"].wait(10)
        members = [m.decode() for m in env.r.zrange(wip, 0, -1)]
        orphans = {m for m in members if m.endswith(":victim")}
        live_held = {m for m in members if m.endswith(":live")}
        back: float | None = None
        while back is None:
            members_now = {m.decode() for m in env.r.zrange(wip, 0, -1)}
            if not members_now & orphans:
                back = time.monotonic() - killed
            elif time.monotonic() - killed > 90:
                raise RuntimeError("recovery: orphans still leased after 90 s")
            else:
                time.sleep(0.05)
        # Two more housekeeping passes of the live worker: anything of its own that it put
        # back would be logged by then (the log line is written when RECLAIM returns).
        time.sleep(3.0)
    finally:
        for proc in procs.values():
            env.children.stop(proc, grace=20)
    summary = logs[0].read_text(errors="replace")
    reclaimed = _reclaimed(summary)
    figures.add(side, "SIGKILL recovery s (default settings)", back)
    figures.add(side, "events put back that the live worker held", max(0, reclaimed - len(orphans)))
    progress(
        f"  {side}: {len(orphans)} events of the killed worker back after {back:.1f} s; the "
        f"live worker held {len(live_held)} then and reclaimed {reclaimed} in all"
    )


def _reclaimed(log: str) -> int:
    """Events a worker put back for dead workers, from its JSON log lines."""
    total = 0
    for line in log.splitlines():
        if "events of a dead worker put back" in line:
            try:
                total += int(json.loads(line).get("count", 0))
            except ValueError:
                continue
    return total


ROWS: list[tuple[str, str, str]] = [
    # (figure, format, which way is better: "up" or "down" or "")
    ("1p events/s", ",.0f", "up"),
    ("1p worker CPU ms/event", ".3f", "down"),
    ("1p Redis cmds/event", ".2f", "down"),
    ("1p Redis CPU us/event", ".1f", "down"),
    ("1p worker CPU share", ".0f", ""),
    ("1p sandbox CPU share", ".0f", ""),
    ("1p Redis CPU share", ".0f", ""),
    ("1p machine CPU share", ".0f", ""),
    ("1p learned events/s", ",.0f", "up"),
    ("1p learned worker CPU ms/event", ".3f", "down"),
    ("1p learned Redis cmds/event", ".2f", "down"),
    ("1p learned Redis CPU us/event", ".1f", "down"),
    ("1p learned worker CPU share", ".0f", ""),
    ("1p learned sandbox CPU share", ".0f", ""),
    ("1p learned machine CPU share", ".0f", ""),
    ("4p events/s", ",.0f", "up"),
    ("4p Redis CPU us/event", ".1f", "down"),
    ("4p Redis CPU share", ".0f", ""),
    ("4p sandbox CPU share", ".0f", ""),
    ("4p machine CPU share", ".0f", ""),
    ("one Redis core carries, events/s", ",.0f", "up"),
    ("enqueue_payment p50 us", ".0f", "down"),
    ("enqueue_payment p99 us", ".0f", "down"),
    ("raw LPUSH p50 us", ".0f", ""),
    ("enqueue p50 / LPUSH p50", ".2f", "down"),
    ("enqueue_payment CPU us", ".0f", "down"),
    ("enqueue CPU / LPUSH CPU", ".2f", "down"),
    ("SIGKILL recovery s (default settings)", ".1f", "down"),
    ("events put back that the live worker held", ".0f", "down"),
    ("2p 100k backlog s", ".1f", "down"),
    ("2p events/s", ",.0f", "up"),
    ("2p sandbox CPU share", ".0f", ""),
    ("2p machine CPU share", ".0f", ""),
]
TARGETS = {
    "1p events/s": ">= 2,000",
    "1p worker CPU ms/event": "<= 0.25",
    "1p learned events/s": ">= 2,000",
    "1p learned worker CPU ms/event": "<= 0.25",
    "enqueue p50 / LPUSH p50": "<= 2.00",
    "enqueue_payment p99 us": "< 500",
    "SIGKILL recovery s (default settings)": "<= 10",
    "events put back that the live worker held": "0",
    "2p 100k backlog s": "< 30",
}


def render(figures: Figures, title: str) -> Table:
    table = Table(title=title, caption="CPU shares: % of one core (the machine: of all cores)")
    for column in ("figure", "target", "before", "after", "after/before"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for name, fmt, _better in ROWS:
        before, after = figures.median("before", name), figures.median("after", name)
        if before is None and after is None:
            continue
        ratio = f"{after / before:.2f}x" if before and after is not None else "-"
        table.add_row(
            name,
            TARGETS.get(name, ""),
            "-" if before is None else format(before, fmt),
            "-" if after is None else format(after, fmt),
            ratio,
        )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf17", description=__doc__)
    parser.add_argument("--before", type=Path, required=True, help="checkout to compare with")
    parser.add_argument("--after", type=Path, default=PROJECT_DIR)
    parser.add_argument("--events", type=int, default=8_000, help="events per 1-process drain")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--enqueue-ops", type=int, default=4_000)
    parser.add_argument("--backlog", action="store_true", help="also the 100k, 2-process run")
    parser.add_argument("--backlog-events", type=int, default=100_000)
    parser.add_argument(
        "--skip", default="", help="comma-separated: drain,learned,four,enqueue,kill"
    )
    for side in ("before", "after"):
        parser.add_argument(
            f"--{side}-env",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"a setting for the {side} side's workers only (repeatable), e.g. "
            "INGEST_CONCURRENCY=128: the same code, two settings",
        )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    install_signal_handlers()
    skip = set(filter(None, args.skip.split(",")))
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    side_env = {
        "before": dict(item.split("=", 1) for item in args.before_env),
        "after": dict(item.split("=", 1) for item in args.after_env),
    }
    figures = Figures()
    loads = [load_average()]
    started = time.monotonic()

    def each(label: str, step: Callable[[str], None], repeats: int) -> None:
        progress(label)
        for _ in range(repeats):
            for side, tree in trees.items():
                env.tree = tree
                env.worker_settings = dict(side_env[side])
                step(side)

    with BenchEnv(latency_ms=LATENCY_MS) as env:
        progress(
            f"before = {trees['before']} {side_env['before'] or ''}, "
            f"after = {trees['after']} {side_env['after'] or ''}; load {loads[0]}"
        )
        if "drain" not in skip:
            each(
                f"drain at {LATENCY_MS:g} ms, 1 process, {args.events:,} events",
                lambda side: drain_figures(env, figures, side, args.events, 1),
                args.repeats,
            )
        if "learned" not in skip:
            # A worker fleet that has run before starts at the rate it learned (kept in Redis
            # for a day): an initial rate at the ceiling stands in for that state, so this
            # row is the worker's own speed, the row above it a cold start from 30/s.
            def learned(side: str) -> None:
                env.worker_settings["INGEST_SEND_RATE_INITIAL"] = "10000"
                drain_figures(env, figures, side, args.events, 1, " learned")

            each(
                f"drain at {LATENCY_MS:g} ms, 1 process, send rate already learned",
                learned,
                args.repeats,
            )
        if "four" not in skip:
            each(
                "drain, 4 processes against one Redis",
                lambda side: drain_figures(env, figures, side, 2 * args.events, 4),
                1,
            )
        loads.append(load_average())
        if "enqueue" not in skip:
            each(
                "enqueue latency",
                lambda side: enqueue_figures(env, figures, side, trees[side], args.enqueue_ops),
                args.repeats,
            )
        if "kill" not in skip:
            each(
                "SIGKILL recovery at default settings",
                lambda side: recovery_figures(env, figures, side, 20_000),
                1,
            )
        if args.backlog:

            def backlog(side: str) -> None:
                drain_figures(env, figures, side, args.backlog_events, 2)
                rate = figures.samples["2p events/s"][side][-1]
                figures.add(side, "2p 100k backlog s", args.backlog_events / rate)

            each(f"backlog of {args.backlog_events:,}, 2 processes", backlog, 1)
        loads.append(load_average())
    for side in trees:
        for tag in ("1p", "4p"):
            per_event = figures.median(side, f"{tag} Redis CPU us/event")
            if per_event and tag == "4p":
                figures.add(side, "one Redis core carries, events/s", 1e6 / per_event)
    title = (
        f"Issue 17, before vs after in one run ({time.monotonic() - started:.0f} s, "
        f"{os.cpu_count()} cores, load average at start / mid / end: {' | '.join(loads)})"
    )
    Console(width=None if sys.stdout.isatty() else 150).print(render(figures, title))
    if args.json:
        args.json.write_text(json.dumps({"loads": loads, "samples": figures.samples}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
