"""Where a slot's time goes between one answer and the next claim (issue 17).

    python bench/slots.py [--events 6000] [--latency-ms 50] [--concurrency 128]

Runs one :class:`ingest.worker.IngestWorker` in this process (burst) against an embedded
redis-server and the sandbox, timing each slot's cycle: a slot (one of
``INGEST_CONCURRENCY``) is claimed, waits for its task to start, is out on the POST, is freed
when the answer is classified, and waits until a claim takes it again. The mean cycle is
``concurrency x drain time / events``; the table splits it into those parts, and shows
what the loop spent its passes on (housekeeping, claim and ack round trips, waiting).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import OUR_QUEUE, BenchEnv, enqueue_ours, make_payments
from ingest.worker import IngestWorker, _Run


class TimedWorker(IngestWorker):
    """The worker, with a stopwatch on each step of a slot's cycle."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.totals: collections.Counter[str] = collections.Counter()
        self.freed: collections.deque[float] = collections.deque()
        self.claimed_at: dict[str, float] = {}

    def _start_run(self) -> _Run:
        run = super()._start_run()
        send, report = run.client.send, run.backpressure.report

        async def timed_send(body: Any, website: Any) -> Any:
            started = time.perf_counter()
            self.totals["claim end -> POST start"] += started - self._claim_end
            outcome = await send(body, website)
            self._post_end = time.perf_counter()
            self.totals["POST (send to answer read)"] += self._post_end - started
            return outcome

        def timed_report(claimed: Any, outcome: Any, seconds: float, in_flight: int) -> None:
            # The slot is free once its answer is reported: the next claim may take it.
            now = time.perf_counter()
            self.totals["answer read -> slot freed"] += now - self._post_end
            self.freed.append(now)
            report(claimed, outcome, seconds, in_flight)

        run.client.send = timed_send  # type: ignore[method-assign]
        run.backpressure.report = timed_report  # type: ignore[method-assign]
        return run

    async def _claim(self, run: _Run) -> int:
        started = time.perf_counter()
        self._claim_end = started
        n = await super()._claim(run)
        ended = time.perf_counter()
        self._claim_end = ended
        self.totals["loop: claim calls"] += ended - started
        self.totals["claims"] += 1
        self.totals["concurrency limit"] += run.backpressure.concurrency.limit
        self.totals["in flight"] += len(run.in_flight)
        for _ in range(min(n, len(self.freed))):
            self.totals["slot freed -> claim starts"] += started - self.freed.popleft()
        self.totals["claim round trip (per slot)"] += n * (ended - started)
        return n

    async def _acknowledge(self, run: _Run) -> None:
        started = time.perf_counter()
        await super()._acknowledge(run)
        self.totals["loop: ack calls"] += time.perf_counter() - started

    async def _housekeep(self, run: _Run) -> None:
        started = time.perf_counter()
        await super()._housekeep(run)
        self.totals["loop: housekeeping"] += time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/slots.py", description=__doc__)
    parser.add_argument("--events", type=int, default=6_000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=None)
    args = parser.parse_args(argv)
    with BenchEnv(latency_ms=args.latency_ms, concurrency=args.concurrency) as env:
        env.fresh()
        enqueue_ours(env, make_payments(args.events))
        worker = TimedWorker(env.settings(queue=OUR_QUEUE))
        worker._claim_end = worker._post_end = time.perf_counter()  # type: ignore[attr-defined]
        started = time.perf_counter()
        worker.work(burst=True)
        wall = time.perf_counter() - started
    t = worker.totals
    n = worker.counts.delivered
    slots = env.concurrency
    cycle = slots * wall / n
    print(
        f"{n:,} events in {wall:.2f} s: {n / wall:,.0f}/s; {slots} slots, "
        f"mean cycle {cycle * 1e3:.1f} ms"
    )
    print("per event, ms (a slot's cycle):")
    for key in (
        "claim round trip (per slot)",
        "claim end -> POST start",
        "POST (send to answer read)",
        "answer read -> slot freed",
        "slot freed -> claim starts",
    ):
        print(f"  {key:32s} {1e3 * t[key] / n:7.2f}")
    passes = max(1, t["claims"])
    print(
        f"mean over claim passes: concurrency limit {t['concurrency limit'] / passes:.0f}, "
        f"in flight {t['in flight'] / passes:.0f}"
    )
    print(f"loop, per claim pass ({int(t['claims']):,} passes), ms:")
    for key in ("loop: housekeeping", "loop: claim calls", "loop: ack calls"):
        print(f"  {key:32s} {1e3 * t[key] / max(1, t['claims']):7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
