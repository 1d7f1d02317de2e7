"""Replay the send-rate learner against a token bucket whose answers lag, in seconds.

    python bench/learner_replay.py [--limits 50,500,2000] [--rtt 0.06] [--seconds 30] [-v]

No Redis, no processes: one credential, permits granted evenly at the learned rate, the
API a token bucket holding one second of L (the sandbox's ``--rate-limit``), a 200 answered
``--rtt`` seconds after its permit and a 429 at once (5 ms). Windows close as ``ACQUIRE``
closes them (a minimum of 0.25 s while starting and 1 s after, 50 answers; at once when at
least 50 answers are 429 and at least as many as the 200s since the first 429), an answer
counts only in its permit's window, and
:func:`ingest.ratelearner.decide` sets the next rate and hold. Prints, per limit, the 429s
as a share of all POSTs and what was delivered after the first 5 s as a share of L:
the figures of ``bench/backpressure.py``'s token-bucket rows, in a second instead of
minutes, for trying a learner change before measuring it for real.

What it leaves out: the event loop's lag (answers of a busy worker lag far more than the
API's latency, and unevenly), batches of permits, several workers, retries. On 2026-12-03,
with the learner of that day, it gave 429s of 4.4%, 7.5% and 3.4% at L=50, 500 and 2,000
where ``bench/backpressure.py`` measured 5.4%, 4.8-6.8% and 1.3-3.6%; it did not reproduce
the fleet's collapse at L=2000, which came from the event loop's lag.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``ingest`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest.ratelearner import LearnerConfig, LearnerState, decide
from ingest.scripts import AnswerWindow

WINDOW_ANSWERS = 50
RTT_429 = 0.005


def replay(
    limit: float,
    *,
    rtt: float = 0.06,
    seconds: float = 30.0,
    step: float = 0.002,
    start_rate: float = 30.0,
    config: LearnerConfig | None = None,
    jitter: float = 0.0,
    seed: int = 0,
    early_429s: int = WINDOW_ANSWERS,
    verbose: bool = False,
) -> tuple[float, float]:
    """(429s / POSTs over the run, delivered after 5 s / L); each answer's latency is
    ``rtt`` times a uniform draw within ``1 +- jitter``."""
    rng = random.Random(seed)
    config = config or LearnerConfig(ceiling=10_000.0)
    now, rate, state, hold_until = 0.0, start_rate, LearnerState(), 0.0
    tokens, owed = limit, 0.0
    opened, ok, throttled, granted, tag = 0.0, 0, 0, 0, 0
    ok_at_first_429: int | None = None
    in_flight: list[tuple[float, bool, int]] = []  # (answered at, a 200?, window tag)
    sent = refused = 0
    delivered_at: list[float] = []
    while now < seconds:
        now += step
        tokens = min(limit, tokens + limit * step)
        if now >= hold_until:
            owed += rate * step
            while owed >= 1:
                owed -= 1
                sent += 1
                granted += 1
                if tokens >= 1:
                    tokens -= 1
                    heapq.heappush(in_flight, (now + rtt * rng.uniform(1 - jitter, 1 + jitter), True, tag))
                    delivered_at.append(now)
                else:
                    refused += 1
                    heapq.heappush(in_flight, (now + rtt * rng.uniform(1 - jitter, 1 + jitter), False, tag))
        while in_flight and in_flight[0][0] <= now:
            _, accepted, answer_tag = heapq.heappop(in_flight)
            if answer_tag == tag:  # late answers count nowhere, as in ACQUIRE
                if not accepted and ok_at_first_429 is None:
                    ok_at_first_429 = ok
                ok += accepted
                throttled += not accepted
        elapsed, answered = now - opened, ok + throttled
        shortest = 0.25 if state.slow_start or state.slow_before else 1.0
        exhausted = (
            throttled >= early_429s
            and ok_at_first_429 is not None
            and throttled >= ok - ok_at_first_429
        )
        if (elapsed >= shortest and (answered >= WINDOW_ANSWERS or elapsed >= 5.0)) or exhausted:
            window = AnswerWindow(
                seconds=elapsed,
                ok=ok,
                throttled=throttled,
                other=0,
                granted=granted,
                retry_after=1.0 if throttled else None,
                header_rate=None,
                ok_before_429=ok_at_first_429,
            )
            decision = decide(rate, window, state, now=now, config=config)
            if verbose and (decision.rate != rate or decision.hold_until > now):
                print(
                    f"{now:6.2f}s {rate:8.1f} -> {decision.rate:8.1f} {decision.reason:10} "
                    f"window {elapsed:.2f}s ok {ok} 429 {throttled} sent {granted}"
                )
            rate, state = decision.rate, decision.state
            hold_until = max(hold_until, decision.hold_until)
            opened, ok, throttled, granted, tag = now, 0, 0, 0, tag + 1
            ok_at_first_429 = None
    after = sum(1 for t in delivered_at if t >= 5.0)
    return refused / max(1, sent), after / (seconds - 5.0) / limit


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/learner_replay.py", description=__doc__)
    parser.add_argument("--limits", default="50,500,2000", help="token-bucket limits L")
    parser.add_argument("--rtt", type=float, default=0.06, help="seconds until a 200 arrives")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("-v", "--verbose", action="store_true", help="print each rate change")
    args = parser.parse_args(argv)
    print(f"{'L':>6}  {'429s / POSTs':>12}  {'delivered after 5 s':>19}")
    for limit in (float(x) for x in args.limits.split(",")):
        share, ratio = replay(limit, rtt=args.rtt, seconds=args.seconds, verbose=args.verbose)
        print(f"{limit:>6.0f}  {share:>12.1%}  {ratio:>18.0%} of L")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
