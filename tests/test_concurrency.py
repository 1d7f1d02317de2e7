"""ingest.concurrency: the requests-in-flight limit that follows the API's latency.

Pure: samples go in by hand, no clock, nothing sleeps.
"""

from __future__ import annotations

from ingest.concurrency import GradientLimit


def feed(limit: GradientLimit, rtt: float, samples: int) -> None:
    for _ in range(samples):
        limit.on_sample(rtt, in_flight=int(limit.limit))


def at_steady_50ms() -> GradientLimit:
    limit = GradientLimit(maximum=128, minimum=16)
    feed(limit, 0.05, 500)
    return limit


def test_the_limit_starts_at_the_maximum() -> None:
    assert GradientLimit(maximum=128, minimum=16).limit == 128


def test_steady_latency_keeps_the_limit_at_the_maximum() -> None:
    assert at_steady_50ms().limit == 128


def test_a_latency_jump_cuts_the_limit_to_the_minimum() -> None:
    limit = at_steady_50ms()
    feed(limit, 2.0, 40)
    assert limit.limit == 16


def test_the_limit_recovers_within_a_few_hundred_fast_answers() -> None:
    # At 50 ms and 16..128 requests in flight, 400 answers take well under 2 seconds.
    limit = at_steady_50ms()
    feed(limit, 2.0, 60)
    feed(limit, 0.05, 400)
    assert limit.limit == 128


def test_a_lasting_new_latency_becomes_the_normal_and_the_limit_grows_back() -> None:
    limit = at_steady_50ms()
    feed(limit, 2.0, 1000)
    assert limit.limit == 128


def test_a_worker_below_half_its_limit_does_not_move_it() -> None:
    limit = GradientLimit(maximum=128, minimum=16)
    for _ in range(100):
        limit.on_sample(2.0, in_flight=10)
    assert limit.limit == 128


def test_free_slots_are_the_limit_less_the_requests_in_flight() -> None:
    limit = GradientLimit(maximum=128, minimum=16)
    assert limit.free(in_flight=100) == 28
    assert limit.free(in_flight=200) == 0
