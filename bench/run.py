"""The whole benchmark in one process tree, printed as ONE table: ours beside each baseline.

    python -m bench [--quick] [--repeats N] [--concurrency N] [--json FILE] [--only 1,2,...]

Sections (numbers as in the table):

1. drain throughput per worker process, API at 0 / 50 / 200 ms: our worker vs RQ
   ``SimpleWorker`` and the forking ``Worker`` doing one POST per job, vs the sandbox's own
   ceiling (and the bound ``concurrency / latency``);
2. worker CPU ms and Redis commands per delivered event (the 50 ms drains of section 1);
3. Redis memory per queued and per finished event (``INFO memory`` deltas, ``MEMORY USAGE``
   of sample keys): ours vs RQ's defaults (``Queue.enqueue``; ``result_ttl`` 500 s);
4. backlog: 100,000 events (``--quick``: 20,000) drained by 1 and by 2 worker processes at
   50 ms: drain time, peak Redis memory, and 10x-smaller vs full (linearity);
5. enqueue latency p50/p99 and throughput: raw ``LPUSH`` (the floor), RQ ``Queue.enqueue``,
   our ``Producer.enqueue(validate_payment(...))``, ``enqueue_payment``, ``enqueue_many``
   and ``enqueue_payment_async``.

Figures are medians of ``--repeats`` runs (3; 1 with ``--quick``) with the spread (min-max)
in brackets; runs of different systems are interleaved so that the machine's noise hits all
of them alike. Ratios are always ours / baseline: above 1 is better for rates, below 1 for
costs (CPU, commands, bytes, latency).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from bench.harness import (
    BASELINE_FUNCTION,
    OUR_QUEUE,
    RQ_QUEUE,
    SYSTEMS,
    BenchEnv,
    DrainRun,
    Interrupted,
    Summary,
    drain,
    enqueue_ours,
    install_signal_handlers,
    make_payments,
    progress,
    ratio,
    sandbox_ceiling,
    used_memory,
    was_interrupted,
)

SECTION_TITLES = {
    1: "1. Drain throughput, events/s per worker process",
    2: "2. Cost per delivered event (API at 50 ms)",
    3: "3. Redis memory per event",
    4: "4. Backlog at 50 ms",
    5: "5. Enqueue latency and throughput (one client, this process)",
}


@dataclass(frozen=True, slots=True)
class Config:
    quick: bool
    repeats: int
    concurrency: int | None
    latencies: tuple[float, ...] = (0.0, 50.0, 200.0)
    ours_events: int = 10_000
    baseline_seconds: float = 10.0  # a baseline drain is sized to last about this long
    ceiling_seconds: float = 3.0
    memory_events: int = 5_000
    backlog_big: int = 100_000
    backlog_small: int = 10_000
    enqueue_ops: int = 5_000
    sections: tuple[int, ...] = (1, 2, 3, 4, 5)

    @classmethod
    def build(cls, args: argparse.Namespace) -> Config:
        sections = tuple(int(s) for s in args.only.split(",")) if args.only else (1, 2, 3, 4, 5)
        if args.quick:
            return cls(
                quick=True,
                repeats=args.repeats or 1,
                concurrency=args.concurrency,
                ours_events=3_000,
                baseline_seconds=4.0,
                ceiling_seconds=1.5,
                memory_events=2_000,
                backlog_big=20_000,
                backlog_small=2_000,
                enqueue_ops=1_500,
                sections=sections,
            )
        return cls(
            quick=False, repeats=args.repeats or 3, concurrency=args.concurrency, sections=sections
        )


def baseline_events(system: str, latency_ms: float, seconds: float) -> int:
    """Jobs for a baseline drain to last about ``seconds`` (one POST at a time)."""
    overhead = 0.006 if system == "rq-simple" else 0.095  # measured: per-job cost off the API
    return int(min(2_000, max(30, round(seconds / (latency_ms / 1000 + overhead)))))


@dataclass(slots=True)
class Row:
    section: int
    figure: str
    ours: str
    baseline: str
    value: str
    ratio: str
    note: str = ""


@dataclass(slots=True)
class Report:
    config: Config
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(
        self,
        section: int,
        figure: str,
        ours: str,
        baselines: Sequence[tuple[str, str, str]],
        note: str = "",
    ) -> None:
        """One figure, then one line per baseline: (name, value, ratio)."""
        if not baselines:
            self.rows.append(Row(section, figure, ours, "", "", "", note))
        for i, (name, value, r) in enumerate(baselines):
            first = i == 0
            self.rows.append(
                Row(
                    section,
                    figure if first else "",
                    ours if first else "",
                    name,
                    value,
                    r,
                    note if first else "",
                )
            )

    def table(self) -> Table:
        cfg = self.config
        table = Table(
            title="datafast-ingest vs plain RQ: "
            + ("QUICK run (scaled down)" if cfg.quick else "full run")
            + f", median of {cfg.repeats} (min-max)",
            caption="ratio = ours / baseline (rates: higher is better; costs: lower is better)",
            show_lines=False,
        )
        table.add_column("figure", max_width=58)
        table.add_column("ours", justify="right")
        table.add_column("baseline", max_width=44)
        table.add_column("baseline value", justify="right")
        table.add_column("ours / baseline", justify="right")
        table.add_column("note", max_width=46, style="dim")
        current = None
        for row in self.rows:
            if row.section != current:
                if current is not None:
                    table.add_section()
                table.add_row(f"[bold]{SECTION_TITLES[row.section]}[/bold]", "", "", "", "", "")
                current = row.section
            table.add_row(row.figure, row.ours, row.baseline, row.value, row.ratio, row.note)
        return table


def _s(values: Sequence[float]) -> Summary:
    return Summary.of(list(values))


def _bytes(n: float) -> str:
    if n != n:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


# -- sections 1 and 2: drains -------------------------------------------------------------------


def section_drains(env: BenchEnv, cfg: Config, report: Report) -> None:
    runs: dict[float, dict[str, list[DrainRun]]] = {}
    ceilings: dict[float, list[float]] = {}
    order = ["ours", "rq-simple", "rq-fork"]
    for latency in cfg.latencies:
        env.set_latency(latency)
        runs[latency] = {s: [] for s in order}
        ceilings[latency] = []
        for rep in range(cfg.repeats):
            progress(f"[1] API {latency:g} ms, run {rep + 1}/{cfg.repeats}: sandbox ceiling")
            ceilings[latency].append(
                sandbox_ceiling(env, seconds=cfg.ceiling_seconds, connections=env.concurrency)
            )
            progress(f"      ceiling {ceilings[latency][-1]:,.0f} req/s")
            rotated = order[rep % 3 :] + order[: rep % 3]  # interleave: nobody always first
            for system in rotated:
                n = (
                    cfg.ours_events
                    if system == "ours"
                    else baseline_events(system, latency, cfg.baseline_seconds)
                )
                progress(
                    f"[1] API {latency:g} ms, run {rep + 1}/{cfg.repeats}: "
                    f"{SYSTEMS[system]} drains {n:,}"
                )
                run = drain(env, system, n)
                runs[latency][system].append(run)
                d = run.as_dict()
                progress(
                    f"      {run.rate:,.1f} ev/s, {run.cpu_ms_per_event:.2f} CPU ms/ev, "
                    f"{run.calls_per_event:.1f} cmds/ev; cores busy: worker "
                    f"{d['worker_cpu_share']:.2f}, sandbox {d['sandbox_cpu_share']:.2f}, "
                    f"redis {d['redis_cpu_share']:.2f}, machine {d['machine_cpu_share']:.2f}"
                )
    report.data["drain"] = {
        str(lat): {s: [r.as_dict() for r in rs] for s, rs in by.items()} for lat, by in runs.items()
    }
    report.data["ceiling"] = {str(lat): c for lat, c in ceilings.items()}

    conc = env.concurrency
    if 1 in cfg.sections:
        for latency in cfg.latencies:
            ours = _s([r.rate for r in runs[latency]["ours"]])
            baselines: list[tuple[str, str, str]] = []
            for system in ("rq-simple", "rq-fork"):
                base = _s([r.rate for r in runs[latency][system]])
                n = runs[latency][system][0].events
                baselines.append(
                    (
                        f"{SYSTEMS[system]}, 1 POST/job ({n} jobs)",
                        base.fmt(1),
                        ratio(ours.median, base.median),
                    )
                )
            ceiling = _s(ceilings[latency])
            baselines.append(
                (
                    f"sandbox ceiling, aiohttp, {conc} conns",
                    ceiling.fmt(0),
                    ratio(ours.median, ceiling.median),
                )
            )
            if latency > 0:
                bound = conc / (latency / 1000)
                baselines.append(
                    (
                        f"bound: {conc} in flight / {latency:g} ms",
                        f"{bound:,.0f}",
                        ratio(ours.median, bound),
                    )
                )
            busy = _s([r.as_dict()["machine_cpu_share"] for r in runs[latency]["ours"]])
            worker = _s([r.as_dict()["worker_cpu_share"] for r in runs[latency]["ours"]])
            report.add(
                1,
                f"API at {latency:g} ms: events/s (ours: {cfg.ours_events:,} events, "
                f"{conc} in flight)",
                ours.fmt(0),
                baselines,
                note=f"while ours drained: worker {worker.median:.2f} cores, machine "
                f"{busy.median:.2f} of {os.cpu_count()} cores busy",
            )
    if 2 in cfg.sections:
        latency = 50.0 if 50.0 in runs else cfg.latencies[0]
        by = runs[latency]
        metrics: list[tuple[str, Callable[[DrainRun], float], int, str]] = [
            (
                "worker CPU ms per delivered event (whole process, rusage)",
                lambda r: r.cpu_ms_per_event,
                2,
                "includes start-up, which ours spreads over more events",
            ),
            (
                "worker CPU ms per delivered event, from the first dequeue on",
                lambda r: r.steady_cpu_ms_per_event,
                2,
                "start-up (imports, registration) left out",
            ),
            (
                "Redis commands per delivered event (INFO commandstats)",
                lambda r: r.calls_per_event,
                1,
                "rq-notes: ~57 per job for RQ",
            ),
        ]
        for figure, get, digits, note in metrics:
            ours = _s([get(r) for r in by["ours"]])
            baselines = []
            for system in ("rq-simple", "rq-fork"):
                base = _s([get(r) for r in by[system]])
                baselines.append(
                    (SYSTEMS[system], base.fmt(digits), ratio(ours.median, base.median))
                )
            report.add(2, f"{figure} [API {latency:g} ms]", ours.fmt(digits), baselines, note)


# -- section 3: memory ----------------------------------------------------------------------------


def section_memory(env: BenchEnv, cfg: Config, report: Report) -> None:
    from rq import Queue

    n = cfg.memory_events
    env.set_latency(0.0)
    out: dict[str, Any] = {"events": n}

    progress(f"[3] memory: our enqueue of {n:,} events")
    env.fresh()
    time.sleep(0.2)
    base = used_memory(env.r)
    payments = make_payments(n)
    enqueue_ours(env, payments)
    out["ours_queued"] = (used_memory(env.r) - base) / n
    out["ours_job_hash"] = env.r.memory_usage(f"rq:job:{payments[0].job_id}") or 0
    out["ours_queue_list"] = (env.r.memory_usage(f"rq:queue:{OUR_QUEUE}") or 0) / n
    progress("[3] memory: our worker drains them (API 0 ms)")
    drain(env, "ours", n, fill=False)
    time.sleep(0.2)
    out["ours_finished"] = (used_memory(env.r) - base) / n
    done_key = f"ingest:{OUR_QUEUE}:done:{payments[0].job_id}"
    out["ours_done_marker"] = env.r.memory_usage(done_key) or 0
    out["ours_done_ttl"] = env.r.ttl(done_key)

    progress(f"[3] memory: RQ Queue.enqueue of {n:,} equivalent jobs")
    env.fresh()
    time.sleep(0.2)
    base = used_memory(env.r)
    queue = Queue(RQ_QUEUE, connection=env.r)
    jobs = [queue.enqueue(BASELINE_FUNCTION, p.wire_body()) for p in make_payments(n)]
    out["rq_queued"] = (used_memory(env.r) - base) / n
    out["rq_job_hash"] = env.r.memory_usage(f"rq:job:{jobs[0].id}") or 0
    out["rq_queue_list"] = (env.r.memory_usage(f"rq:queue:{RQ_QUEUE}") or 0) / n
    progress("[3] memory: RQ SimpleWorker drains them (API 0 ms, default result_ttl)")
    drain(env, "rq-simple", n, fill=False)
    time.sleep(0.2)
    out["rq_finished"] = (used_memory(env.r) - base) / n
    job_after = env.r.memory_usage(f"rq:job:{jobs[0].id}") or 0
    result_key = next(iter(env.r.scan_iter(match=f"rq:results:{jobs[0].id}*", count=1000)), None)
    result = (env.r.memory_usage(result_key) or 0) if result_key else 0
    out["rq_finished_job_hash"] = job_after
    out["rq_result"] = result
    out["rq_finished_ttl"] = env.r.ttl(f"rq:job:{jobs[0].id}")
    report.data["memory"] = out

    report.add(
        3,
        f"used_memory per queued event ({n:,} queued)",
        _bytes(out["ours_queued"]),
        [
            (
                "RQ Queue.enqueue, same body",
                _bytes(out["rq_queued"]),
                ratio(out["ours_queued"], out["rq_queued"]),
            )
        ],
        note=f"MEMORY USAGE job hash: ours {_bytes(out['ours_job_hash'])}, RQ "
        f"{_bytes(out['rq_job_hash'])}",
    )
    report.add(
        3,
        "used_memory per finished event (after the drain)",
        _bytes(out["ours_finished"]),
        [
            (
                "RQ, finished job + result kept (result_ttl 500 s)",
                _bytes(out["rq_finished"]),
                ratio(out["ours_finished"], out["rq_finished"]),
            )
        ],
        note=f"ours keeps a done marker {_bytes(out['ours_done_marker'])} for "
        f"{out['ours_done_ttl']} s (dedup window); RQ job hash "
        f"{_bytes(job_after)} + result {_bytes(result)} for {out['rq_finished_ttl']} s",
    )


# -- section 4: backlog ---------------------------------------------------------------------------


def section_backlog(env: BenchEnv, cfg: Config, report: Report) -> None:
    env.set_latency(50.0)
    out: dict[str, Any] = {}
    drains = report.data.get("drain", {}).get("50.0", {})
    simple_rate = _s([r["rate"] for r in drains.get("rq-simple", [])]).median
    queued_bytes = report.data.get("memory", {}).get("rq_queued", float("nan"))
    for processes in (1, 2):
        runs: dict[int, DrainRun] = {}
        for n in (cfg.backlog_small, cfg.backlog_big):
            progress(f"[4] backlog: {n:,} events, {processes} worker process(es), API 50 ms")
            env.fresh()
            time.sleep(0.2)
            base = used_memory(env.r)
            run = drain(env, "ours", n, processes=processes)
            runs[n] = run
            out[f"{processes}x{n}"] = {**run.as_dict(), "empty_memory": base}
            progress(
                f"      {run.drain_s:.1f} s ({run.rate:,.0f} ev/s), peak used_memory "
                f"{_bytes(run.peak_memory)}"
            )
        big, small = runs[cfg.backlog_big], runs[cfg.backlog_small]
        linear = (big.drain_s / big.events) / (small.drain_s / small.events)
        out[f"{processes}_linearity"] = linear
        label = f"{processes} worker process{'es' if processes > 1 else ''}"
        extrapolated = big.events / (simple_rate * processes) if simple_rate == simple_rate else 0
        report.add(
            4,
            f"{big.events:,} events, {label}: drain time",
            f"{big.drain_s:,.1f} s",
            [
                (
                    f"RQ SimpleWorker x{processes}, extrapolated from section 1",
                    f"{extrapolated:,.0f} s" if extrapolated else "-",
                    ratio(big.drain_s, extrapolated) if extrapolated else "-",
                ),
            ],
            note=f"{big.rate:,.0f} ev/s; wall incl. start-up {big.wall_s:,.1f} s",
        )
        mem_empty = out[f"{processes}x{big.events}"]["empty_memory"]
        rq_peak = mem_empty + queued_bytes * big.events
        report.add(
            4,
            f"{big.events:,} events, {label}: peak used_memory",
            _bytes(big.peak_memory),
            [
                (
                    "RQ Queue.enqueue backlog, from section 3 bytes/job",
                    _bytes(rq_peak),
                    ratio(big.peak_memory, rq_peak),
                ),
            ],
            note=f"empty Redis {_bytes(mem_empty)}",
        )
        report.add(
            4,
            f"{label}: s/event at {big.events:,} / at {small.events:,}",
            f"{linear:.2f}",
            [("linear (ideal)", "1.00", ratio(linear, 1.0))],
            note=f"{small.events:,} took {small.drain_s:.1f} s ({small.rate:,.0f} ev/s)",
        )
    report.data["backlog"] = out


# -- section 5: enqueue ---------------------------------------------------------------------------


FLOOR, RQ_SINGLE = "raw LPUSH of the same payload", "RQ Queue.enqueue"
BULK_FLOOR = "raw LPUSH, pipeline of 100"
BULK_RQ = "RQ Queue.enqueue_many, pipeline of 100"
BULK_OURS = "Producer.enqueue_many, 100 per call"
BASELINE_METHODS = (FLOOR, RQ_SINGLE, BULK_FLOOR, BULK_RQ)


@dataclass(slots=True)
class EnqueueRun:
    method: str
    events: int
    calls: int
    seconds: float
    latencies_us: list[float]
    not_queued: int = 0
    error: str = ""

    @property
    def throughput(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_us:
            return float("nan")
        values = sorted(self.latencies_us)
        return values[min(len(values) - 1, int(q * len(values)))]

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "events": self.events,
            "calls": self.calls,
            "seconds": self.seconds,
            "throughput": self.throughput,
            "p50_us": self.pct(0.50),
            "p99_us": self.pct(0.99),
            "not_queued": self.not_queued,
            "error": self.error,
        }


def _fields(count: int) -> list[dict[str, Any]]:
    return [
        {
            "amount": p.amount,
            "currency": p.currency,
            "transaction_id": p.transaction_id,
            "datafast_visitor_id": p.datafast_visitor_id,
            "email": p.email,
            "name": p.name,
            "customer_id": p.customer_id,
        }
        for p in make_payments(count)
    ]


def _zero(_: object) -> int:
    return 0  # a baseline call never leaves an event "not queued"


SliceResult = tuple[list[float], int, float]  # latencies (us), events not queued, seconds


def _sync_slice(call: Callable[[Any], int]) -> Callable[[Sequence[Any]], SliceResult]:
    def run(items: Sequence[Any]) -> SliceResult:
        latencies: list[float] = []
        bad = 0
        clock = time.perf_counter
        start = clock()
        for item in items:
            t = clock()
            bad += call(item)
            latencies.append((clock() - t) * 1e6)
        return latencies, bad, clock() - start

    return run


@dataclass(slots=True)
class Method:
    name: str
    items: list[Any]
    run_slice: Callable[[Sequence[Any]], SliceResult]
    per_call: int = 1
    close: Callable[[], None] = lambda: None


def _methods(env: BenchEnv, ops: int, loop: asyncio.AbstractEventLoop) -> list[Method]:
    """Each way to enqueue ``ops`` events, ready to run slice by slice."""
    from rq import Queue

    import ingest
    from ingest.jobs import job_data
    from ingest.models import validate_payment
    from ingest.producer import Producer, configure

    settings = env.settings()
    methods: list[Method] = []

    # The floor: one LPUSH of the job data our producer stores; then RQ's own enqueue.
    lpush_conn = redis.Redis.from_url(env.redis_url, socket_timeout=5)
    payloads = [job_data(p) for p in make_payments(ops)]
    methods.append(
        Method(
            FLOOR,
            payloads,
            _sync_slice(lambda data: _zero(lpush_conn.lpush("bench:lpush", data))),
            close=lpush_conn.close,
        )
    )
    rq_conn = redis.Redis.from_url(env.redis_url, socket_timeout=5)
    queue = Queue("bench-enqueue", connection=rq_conn)
    bodies = [p.wire_body() for p in make_payments(ops)]
    methods.append(
        Method(
            RQ_SINGLE,
            bodies,
            _sync_slice(lambda body: _zero(queue.enqueue(BASELINE_FUNCTION, body))),
            close=rq_conn.close,
        )
    )

    # The bulk floor and RQ's bulk enqueue: pipelines of 100.
    def lpush_pipeline(chunk: list[str]) -> int:
        with lpush_conn.pipeline(transaction=False) as pipe:
            for data in chunk:
                pipe.lpush("bench:lpush-bulk", data)
            pipe.execute()
        return 0

    more = [job_data(p) for p in make_payments(ops)]
    methods.append(
        Method(
            BULK_FLOOR,
            [more[i : i + 100] for i in range(0, ops, 100)],
            _sync_slice(lpush_pipeline),
            per_call=100,
        )
    )

    def rq_many(chunk: list[str]) -> int:
        with rq_conn.pipeline() as pipe:
            queue.enqueue_many(
                [Queue.prepare_data(BASELINE_FUNCTION, args=(b,)) for b in chunk], pipeline=pipe
            )
            pipe.execute()
        return 0

    more_bodies = [p.wire_body() for p in make_payments(ops)]
    methods.append(
        Method(
            BULK_RQ,
            [more_bodies[i : i + 100] for i in range(0, ops, 100)],
            _sync_slice(rq_many),
            per_call=100,
        )
    )

    # Ours, as a checkout calls it: the default producer connection (fail-fast timeout),
    # spool on (in a temp dir); validation inside the timing.
    producer = Producer(settings)
    methods.append(
        Method(
            "Producer.enqueue(validate_payment(...))",
            _fields(ops),
            _sync_slice(lambda f: int(producer.enqueue(validate_payment(**f)).status != "queued")),
            close=producer.close,
        )
    )
    default = configure(settings)
    methods.append(
        Method(
            "enqueue_payment(...) (module function)",
            _fields(ops),
            _sync_slice(lambda f: int(ingest.enqueue_payment(**f).status != "queued")),
            close=default.close,
        )
    )
    bulk_producer = Producer(settings)
    payments = make_payments(ops)
    methods.append(
        Method(
            BULK_OURS,
            [payments[i : i + 100] for i in range(0, ops, 100)],
            _sync_slice(lambda b: sum(r.status != "queued" for r in bulk_producer.enqueue_many(b))),
            per_call=100,
            close=bulk_producer.close,
        )
    )

    fn = getattr(ingest, "enqueue_payment_async", None)
    producer_cls = getattr(ingest, "AsyncProducer", None)
    if fn is not None and producer_cls is not None:
        async_producer = producer_cls(settings)

        async def run_async(items: Sequence[dict[str, Any]]) -> SliceResult:
            latencies: list[float] = []
            bad = 0
            clock = time.perf_counter
            start = clock()
            for f in items:
                t = clock()
                receipt = await fn(**f, producer=async_producer)
                latencies.append((clock() - t) * 1e6)
                bad += receipt.status != "queued"
            return latencies, bad, clock() - start

        methods.append(
            Method(
                "enqueue_payment_async(...)",
                _fields(ops),
                lambda items: loop.run_until_complete(run_async(items)),
                close=lambda: loop.run_until_complete(async_producer.aclose()),
            )
        )
    return methods


def enqueue_round(env: BenchEnv, ops: int, *, slices: int = 10) -> list[EnqueueRun]:
    """Every method on ``ops`` events, interleaved in ``slices`` rounds so that the machine's
    noise falls on all of them alike; the first slice of each is a warm-up, not counted."""
    env.r.flushall()
    loop = asyncio.new_event_loop()
    methods: list[Method] = []
    try:
        methods = _methods(env, ops, loop)
        runs = {m.name: EnqueueRun(m.name, 0, 0, 0.0, []) for m in methods}
        for k in range(slices + 1):
            for m in methods:
                size = max(1, len(m.items) // (slices + 1))
                part = m.items[k * size : (k + 1) * size]
                if not part:
                    continue
                try:
                    latencies, bad, seconds = m.run_slice(part)
                except Exception as exc:
                    runs[m.name].error = f"{type(exc).__name__}: {exc}"
                    continue
                if k == 0:
                    continue  # warm-up
                run = runs[m.name]
                run.latencies_us += latencies
                run.not_queued += bad
                run.seconds += seconds
                run.calls += len(part)
                run.events += len(part) * m.per_call
        out = list(runs.values())
        if not any(m.name.endswith("_async(...)") for m in methods):
            out.append(
                EnqueueRun("enqueue_payment_async(...)", 0, 0, 0.0, [], error="not in ingest")
            )
        return out
    finally:
        for m in methods:
            with contextlib.suppress(Exception):
                m.close()
        loop.close()


def section_enqueue(env: BenchEnv, cfg: Config, report: Report) -> None:
    rounds: list[list[EnqueueRun]] = []
    for rep in range(cfg.repeats):
        progress(
            f"[5] enqueue latency, round {rep + 1}/{cfg.repeats}: {cfg.enqueue_ops:,} "
            "calls per method"
        )
        runs = enqueue_round(env, cfg.enqueue_ops)
        for run in runs:
            s = run.summary()
            progress(
                f"      {run.method}: p50 {s['p50_us']:.0f} us, p99 {s['p99_us']:.0f} us, "
                f"{s['throughput']:,.0f} events/s"
                + (f", {run.not_queued} NOT queued" if run.not_queued else "")
                + (f", error {run.error}" if run.error else "")
            )
        rounds.append(runs)
    report.data["enqueue"] = [[r.summary() for r in runs] for runs in rounds]

    methods = [r.method for r in rounds[0]]

    def stat(method: str, key: str) -> Summary:
        values = [
            r.summary()[key] for runs in rounds for r in runs if r.method == method and not r.error
        ]
        return _s([v for v in values if v == v])

    for method in (m for m in methods if m not in BASELINE_METHODS):
        bulk = method == BULK_OURS
        bases = (BULK_FLOOR, BULK_RQ) if bulk else (FLOOR, RQ_SINGLE)
        not_queued = sum(r.not_queued for runs in rounds for r in runs if r.method == method)
        note = (
            f"{not_queued} receipts not 'queued' (spooled: Redis slower than "
            "INGEST_PRODUCER_TIMEOUT, then the breaker)"
            if not_queued
            else ""
        )
        if stat(method, "throughput").n == 0:
            err = next((r.error for runs in rounds for r in runs if r.method == method), "")
            report.add(5, method, "-", [], note=err or "no data")
            continue
        p50, p99 = stat(method, "p50_us"), stat(method, "p99_us")
        latency_rows = []
        for base in bases:
            b50, b99 = stat(base, "p50_us"), stat(base, "p99_us")
            latency_rows.append(
                (
                    base,
                    f"{b50.fmt(0)} / {b99.fmt(0)} us",
                    f"{ratio(p50.median, b50.median)} / {ratio(p99.median, b99.median)}",
                )
            )
        unit = "per call of 100" if bulk else "per call"
        report.add(
            5,
            f"{method}: p50 / p99 latency {unit}",
            f"{p50.fmt(0)} / {p99.fmt(0)} us",
            latency_rows,
            note,
        )
        ours = stat(method, "throughput")
        report.add(
            5,
            f"{method}: events/s",
            ours.fmt(0),
            [
                (
                    base,
                    stat(base, "throughput").fmt(0),
                    ratio(ours.median, stat(base, "throughput").median),
                )
                for base in bases
            ],
        )


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="scaled down (backlog 20k, 1 repeat): a few minutes"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs per figure (default 3; 1 with --quick)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="our worker's INGEST_CONCURRENCY (default: the package default)",
    )
    parser.add_argument("--only", default="", help="comma-separated sections, e.g. 1,2")
    parser.add_argument("--json", type=Path, default=None, help="save every measurement here")
    return parser.parse_args(argv)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version(), "cpus": str(os.cpu_count())}
    for package in ("rq", "redis", "httpx", "aiohttp", "datafast-ingest"):
        try:
            out[package] = version(package)
        except Exception:
            out[package] = "?"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = Config.build(args)
    install_signal_handlers()
    console = Console(width=None if sys.stdout.isatty() else 200)
    report = Report(cfg)
    report.data["config"] = asdict(cfg)
    report.data["versions"] = _versions()
    started = time.monotonic()
    interrupted = False
    try:
        with BenchEnv(latency_ms=cfg.latencies[0], concurrency=cfg.concurrency) as env:
            info = env.r.info("server")
            report.data["versions"]["redis-server"] = str(info.get("redis_version"))
            report.data["config"]["concurrency"] = env.concurrency
            steps: list[tuple[set[int], Callable[[BenchEnv, Config, Report], None]]] = [
                ({1, 2, 4}, section_drains),  # 4 extrapolates from section 1's RQ rates
                ({3, 4}, section_memory),  # 4 compares with section 3's bytes per job
                ({4}, section_backlog),
                ({5}, section_enqueue),
            ]
            for needed_by, step in steps:
                if not needed_by & set(cfg.sections):
                    continue
                if step is section_backlog and 4 not in cfg.sections:
                    continue
                try:
                    step(env, cfg, report)
                except Exception as exc:
                    if was_interrupted():
                        raise KeyboardInterrupt from exc
                    message = f"{step.__name__} failed: {type(exc).__name__}: {exc}"
                    report.errors.append(message + "\n" + traceback.format_exc())
                    progress(f"[red]{message}[/red]")
    except BaseException as exc:
        if not (isinstance(exc, KeyboardInterrupt) or was_interrupted()):
            raise
        interrupted = True
        kind = "SIGTERM" if isinstance(exc, Interrupted) else "Ctrl+C"
        progress(f"interrupted ({kind}): every process was stopped; partial results below")
    report.data["seconds"] = time.monotonic() - started
    report.data["errors"] = report.errors
    v = report.data["versions"]
    console.print(
        f"machine: {v['cpus']} cores, Python {v['python']}, rq {v['rq']}, redis-py {v['redis']},"
        f" redis-server {v.get('redis-server', '?')}, httpx {v['httpx']}, aiohttp {v['aiohttp']};"
        f" ours at INGEST_CONCURRENCY={report.data['config'].get('concurrency')};"
        f" bench took {report.data['seconds']:.0f} s"
    )
    report.rows = [r for r in report.rows if r.section in cfg.sections]
    console.print(report.table())
    for error in report.errors:
        console.print(f"[red]{error}[/red]")
    if args.json:
        args.json.write_text(json.dumps(report.data, indent=2, default=str))
        progress(f"saved {args.json}")
    if interrupted:
        return 130
    return 1 if report.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
