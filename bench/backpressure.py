"""Backpressure benchmark: the fleet against sporadic 429s, a real rate limit and a
latency step, in one table from one run.

    python bench/backpressure.py [--seconds 20] [--quick] [--json out.json]

Everything on this machine: an embedded redis-server, the sandbox API in its own process
(50 ms latency), real ``python -m ingest worker`` processes. Each scenario starts from an
empty Redis (nothing learned) and a reset sandbox, keeps the queue topped up, and measures
for ``--seconds`` from the first delivery:

1. sporadic 429s: 1%, 2% and 5% of answers are 429 with ``Retry-After: 1`` and no real
   limit behind them, one worker process, against the no-fault rate (target at 2%: >= 70%);
2. a token-bucket limit L of 50, 500 and 2,000 requests/s (the sandbox's ``--rate-limit``,
   bucket one second of L, 429 at once when empty) with 1 and 4 worker processes: the
   delivered rate after convergence against L (target >= 90%), the 429s as a share of all
   POSTs over the whole run, start-up included (target <= 5%), and the seconds from the
   first delivery until every later second delivers at least 85% of L, and the 429s as a
   share of the POSTs from then on ("429s after": holding the limit, without the start);
3. a latency step, one worker process: 50 ms, then 2 s, then 50 ms again (a third of the
   time each): the requests that timed out (``INGEST_REQUEST_TIMEOUT=5``) and the seconds
   after the step back until a second delivers 90% of the rate before the step.

The machine's load average is printed before and after: figures on a busy machine are low.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``ingest`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
from rich.console import Console
from rich.table import Table

from bench.harness import (
    OUR_QUEUE,
    PYTHON,
    BenchEnv,
    Interrupted,
    install_signal_handlers,
    make_payments,
    progress,
)
from ingest.keys import QueueKeys
from ingest.producer import Producer

LATENCY_MS = 50.0
SAMPLE = 0.25  # seconds between samples of the sandbox's counters
TOP_UP_BELOW = 3000  # queued events under which the feeder adds a batch
TOP_UP_BATCH = 2000


@dataclass
class Result:
    scenario: str
    processes: int
    target: str
    delivered_per_s: float
    ratio: float | None
    ratio_of: str
    throttled_share: float
    posts: int
    converge_s: float | None = None
    throttled_share_converged: float | None = None
    """429s / POSTs from ``converge_s`` to the end: the cost of holding the limit, where
    ``throttled_share`` includes the start (slow start overshooting the bucket's burst)."""
    timeouts: int | None = None
    recover_s: float | None = None


class Feeder(threading.Thread):
    """Keeps the queue from running dry while a scenario runs."""

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(daemon=True)
        self.env = env
        self.stop = threading.Event()
        self.connection = redis.Redis.from_url(env.redis_url, socket_timeout=60)
        self.producer = Producer(
            env.settings(queue=OUR_QUEUE), connection=self.connection, spool=False
        )
        self.queue = QueueKeys(OUR_QUEUE).queue

    def fill(self, count: int) -> None:
        for start in range(0, count, TOP_UP_BATCH):
            self.producer.enqueue_many(make_payments(min(TOP_UP_BATCH, count - start)))

    def run(self) -> None:
        while not self.stop.wait(0.2):
            if int(self.connection.llen(self.queue)) < TOP_UP_BELOW:
                self.fill(TOP_UP_BATCH)

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.connection.close()


@dataclass
class Samples:
    """(seconds since the first delivery, recorded, 429s, requests), every SAMPLE s."""

    rows: list[tuple[float, int, int, int]]

    def rate_between(self, start: float, end: float) -> float:
        inside = [r for r in self.rows if start <= r[0] <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return 0.0
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def per_second(self) -> list[tuple[float, float]]:
        """(end of the second, deliveries/s in it) for each whole second."""
        out = []
        t = 1.0
        while t <= self.rows[-1][0]:
            out.append((t, self.rate_between(t - 1.0, t)))
            t += 1.0
        return out

    def throttled_share_after(self, start: float) -> float | None:
        """429s / POSTs from ``start`` s to the end (None: too little left to tell)."""
        after = [r for r in self.rows if r[0] >= start]
        if len(after) < 2 or after[-1][3] <= after[0][3]:
            return None
        return (after[-1][2] - after[0][2]) / (after[-1][3] - after[0][3])

    @property
    def throttled(self) -> int:
        return self.rows[-1][2]

    @property
    def posts(self) -> int:
        return self.rows[-1][3]


def run_scenario(
    env: BenchEnv,
    *,
    processes: int,
    seconds: float,
    faults: dict[str, Any],
    prefill: int,
    during: Sequence[tuple[float, dict[str, Any]]] = (),
    worker_env: dict[str, str] | None = None,
) -> Samples:
    """Start ``processes`` workers against ``faults``, measure ``seconds`` from the first
    delivery; ``during`` changes the faults at given seconds."""
    env.fresh()
    env.sandbox.set_faults(**faults)
    feeder = Feeder(env)
    feeder.fill(prefill)
    argv, base = env.ours_argv()
    argv = [PYTHON, "-m", "ingest", "worker"]  # not --burst: stopped when measured
    base.update(INGEST_SHUTDOWN_GRACE="2", INGEST_LOG_LEVEL="WARNING")
    base.update(worker_env or {})
    procs = [
        env.children.spawn(argv, env=base, log=env.tmp / f"worker-{i}.log")
        for i in range(processes)
    ]
    feeder.start()
    rows: list[tuple[float, int, int, int]] = []
    started: float | None = None
    changes = list(during)
    try:
        deadline = time.monotonic() + 60
        while True:
            now = time.monotonic()
            stats = env.sandbox.stats()
            recorded = stats["recorded"]
            if started is None:
                if recorded == 0:
                    dead = [p for p in procs if p.poll() is not None]
                    if dead:
                        log = (env.tmp / f"worker-{procs.index(dead[0])}.log").read_text()
                        raise RuntimeError(f"a worker exited before delivering:\n{log[-2000:]}")
                    if now > deadline:
                        raise RuntimeError("no delivery within 60 s of starting the workers")
                    time.sleep(0.05)
                    continue
                started = now
            elapsed = now - started
            rows.append((elapsed, recorded, stats["by_status"].get("429", 0), stats["requests"]))
            while changes and elapsed >= changes[0][0]:
                env.sandbox.set_faults(**changes.pop(0)[1])
            if elapsed >= seconds:
                break
            time.sleep(SAMPLE)
    finally:
        feeder.close()
        for proc in procs:
            env.children.stop(proc)
    return Samples(rows)


def converged_after(samples: Samples, level: float) -> float | None:
    """Seconds until every later whole second delivers at least ``level``."""
    seconds = samples.per_second()
    for i, (end, _) in enumerate(seconds):
        if all(rate >= level for _, rate in seconds[i:]):
            return end - 1.0
    return None


def retried(env: BenchEnv) -> int:
    return int(env.r.hget(QueueKeys(OUR_QUEUE).stats, "retried") or 0)


def sporadic(env: BenchEnv, seconds: float, settle: float) -> list[Result]:
    results: list[Result] = []
    base_rate = 0.0
    for share in (0.0, 0.01, 0.02, 0.05):
        progress(f"sporadic 429s: {share:.0%}")
        faults = {"rate_429": share, "retry_after": 1, "seed": 7} if share else {}
        samples = run_scenario(env, processes=1, seconds=seconds, faults=faults, prefill=6000)
        rate = samples.rate_between(settle, seconds)
        if not share:
            base_rate = rate
        results.append(
            Result(
                scenario="no faults" if not share else f"{share:.0%} sporadic 429s",
                processes=1,
                target="-" if not share else (">= 70%" if share == 0.02 else ""),
                delivered_per_s=rate,
                ratio=rate / base_rate if base_rate else None,
                ratio_of="no-fault rate",
                throttled_share=samples.throttled / max(1, samples.posts),
                posts=samples.posts,
            )
        )
    return results


def token_bucket(
    env: BenchEnv, seconds: float, settle: float, limits: Sequence[int]
) -> list[Result]:
    results: list[Result] = []
    for limit in limits:
        for processes in (1, 4):
            progress(f"token bucket: L={limit}/s, {processes} process(es)")
            samples = run_scenario(
                env,
                processes=processes,
                seconds=seconds,
                faults={"rate_limit": limit},
                prefill=max(3000, int(limit * 3)),
            )
            rate = samples.rate_between(settle, seconds)
            converge = converged_after(samples, 0.85 * limit)
            results.append(
                Result(
                    scenario=f"token bucket L={limit}/s",
                    processes=processes,
                    target=">= 90% of L, <= 5% 429s",
                    delivered_per_s=rate,
                    ratio=rate / limit,
                    ratio_of="L",
                    throttled_share=samples.throttled / max(1, samples.posts),
                    posts=samples.posts,
                    converge_s=converge,
                    throttled_share_converged=(
                        None if converge is None else samples.throttled_share_after(converge)
                    ),
                )
            )
    return results


def latency_step(env: BenchEnv, seconds: float) -> Result:
    progress("latency step: 50 ms -> 2 s -> 50 ms")
    third = seconds / 3
    samples = run_scenario(
        env,
        processes=1,
        seconds=seconds,
        faults={},
        prefill=6000,
        during=[(third, {"latency_ms": 2000.0}), (2 * third, {"latency_ms": LATENCY_MS})],
        worker_env={"INGEST_REQUEST_TIMEOUT": "5"},
    )
    before = samples.rate_between(max(0.0, third - 3), third)
    recover = None
    for end, rate in samples.per_second():
        if end > 2 * third and rate >= 0.9 * before:
            recover = end - 2 * third
            break
    after = samples.rate_between(2 * third + (recover or 0), seconds)
    return Result(
        scenario="latency 50 ms -> 2 s -> 50 ms",
        processes=1,
        target="no timeouts, recover in seconds",
        delivered_per_s=after,
        ratio=after / before if before else None,
        ratio_of="rate before the step",
        throttled_share=samples.throttled / max(1, samples.posts),
        posts=samples.posts,
        timeouts=retried(env),
        recover_s=recover,
    )


def table(results: Sequence[Result], load: tuple[str, str]) -> Table:
    t = Table(title=f"backpressure (load average before {load[0]}, after {load[1]})")
    for column in (
        "scenario",
        "procs",
        "target",
        "delivered/s",
        "ratio",
        "429s / POSTs",
        "converge s",
        "429s after",
        "timeouts",
        "recover s",
    ):
        t.add_column(column, justify="left" if column in ("scenario", "target") else "right")
    for r in results:
        t.add_row(
            r.scenario,
            str(r.processes),
            r.target,
            f"{r.delivered_per_s:,.0f}",
            "-" if r.ratio is None else f"{r.ratio:.0%} of {r.ratio_of}",
            f"{r.throttled_share:.1%} of {r.posts:,}",
            "-" if r.converge_s is None else f"{r.converge_s:.0f}",
            "-" if r.throttled_share_converged is None else f"{r.throttled_share_converged:.1%}",
            "-" if r.timeouts is None else str(r.timeouts),
            "-" if r.recover_s is None else f"{r.recover_s:.0f}",
        )
    return t


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured per scenario")
    parser.add_argument(
        "--quick", action="store_true", help="10 s per scenario (the latency step 15 s)"
    )
    parser.add_argument("--limits", default="50,500,2000", help="token-bucket limits L")
    parser.add_argument("--only", choices=("sporadic", "bucket", "latency"), default=None)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    seconds = 10.0 if args.quick else args.seconds
    settle = min(5.0, seconds / 3)
    limits = [int(x) for x in args.limits.split(",")]
    install_signal_handlers()
    load_before = load_average()
    results: list[Result] = []
    try:
        with BenchEnv(latency_ms=LATENCY_MS) as env:
            if args.only in (None, "sporadic"):
                results += sporadic(env, seconds, settle)
            if args.only in (None, "bucket"):
                results += token_bucket(env, seconds, settle, limits)
            if args.only in (None, "latency"):
                results.append(latency_step(env, max(15.0, seconds)))
    except Interrupted:
        progress("interrupted: partial results")
    except Exception as exc:  # a failed scenario still shows the ones measured before it
        progress(f"stopped by {type(exc).__name__}: {exc}; partial results")
    Console(width=160).print(table(results, (load_before, load_average())))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
