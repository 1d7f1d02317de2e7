"""Replay the send-rate learner against a token bucket whose answers lag, in seconds.

    python bench/learner_replay.py [--limits 50,500,2000] [--rtt 0.06] [--seconds 30] [-v]

No Redis, no processes: one credential, permits granted evenly at the learned rate, the
API a token bucket holding one second of L (the sandbox's ``--rate-limit``), every answer
``--rtt`` seconds after its permit (the sandbox waits its latency before it looks at the
bucket, so a 429 is as slow as a 200). Windows close as ``ACQUIRE`` closes them: after a
minimum of 0.25 s while starting and 1 s after, once they hold 50 answers and answers to
half their permits; when at least 20 answers are 429 and twice the 200s since the first
429, the credential is held at once for a second and the window judged once 90% of its
permits are answered (or the hold ends). An answer counts only in its permit's window,
and :func:`ingest.ratelearner.decide` sets the next rate and hold. Prints, per limit, the
429s as a share of all POSTs and what was delivered after the first 5 s as a share of L:
the figures of ``bench/backpressure.py``'s token-bucket rows, in a second instead of
minutes, for trying a learner change before measuring it for real. If ``ACQUIRE``'s rules
change, this replay must follow.

What it leaves out: the event loop's lag (answers of a busy worker lag far more than the
API's latency, and unevenly), batches of permits, several workers, retries. It follows
one worker process's rows within about a point; it cannot show the fleet's, whose
estimates come from answers that lag their permits on a busy machine.
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
HELD_ANSWERED = 0.9
WINDOW_ANSWERED = 0.5
EXHAUSTED_429S = 20


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
    exhausted_429s: int = EXHAUSTED_429S,
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
    held, held_at = False, 0.0
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
                accepted = tokens >= 1
                if accepted:
                    tokens -= 1
                    delivered_at.append(now)
                else:
                    refused += 1
                answered_at = now + rtt * rng.uniform(1 - jitter, 1 + jitter)
                heapq.heappush(in_flight, (answered_at, accepted, tag))
        while in_flight and in_flight[0][0] <= now:
            _, accepted, answer_tag = heapq.heappop(in_flight)
            if answer_tag == tag:  # late answers count nowhere, as in ACQUIRE
                if not accepted and ok_at_first_429 is None:
                    ok_at_first_429 = ok
                ok += accepted
                throttled += not accepted
        elapsed, answered = now - opened, ok + throttled
        shortest = 0.25 if state.slow_start or state.slow_before else 1.0
        if (
            not held
            and throttled >= exhausted_429s
            and ok_at_first_429 is not None
            and throttled >= 2 * (ok - ok_at_first_429)
        ):
            held, held_at = True, now  # exhausted: hold at once
            hold_until = max(hold_until, now + 1.0)
        if held:
            closing = answered >= HELD_ANSWERED * granted or now >= hold_until
        else:
            closing = elapsed >= shortest and (
                (answered >= WINDOW_ANSWERS and answered >= WINDOW_ANSWERED * granted)
                or elapsed >= 5.0
            )
        if closing:
            window = AnswerWindow(
                seconds=held_at - opened if held else elapsed,
                ok=ok,
                throttled=throttled,
                other=0,
                granted=granted,
                retry_after=1.0 if throttled else None,
                header_rate=None,
                ok_before_429=ok_at_first_429,
                held=held,
            )
            decision = decide(rate, window, state, now=now, config=config)
            if verbose and (decision.rate != rate or decision.hold_until > now or held):
                print(
                    f"{now:6.2f}s {rate:8.1f} -> {decision.rate:8.1f} {decision.reason:10} "
                    f"window {elapsed:.2f}s ok {ok} 429 {throttled} sent {granted}"
                )
            rate, state = decision.rate, decision.state
            hold_until = max(hold_until, decision.hold_until)
            opened, ok, throttled, granted, tag = now, 0, 0, 0, tag + 1
            ok_at_first_429, held = None, False
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
