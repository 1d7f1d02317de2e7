"""ingest.throttle: the worker's shared send rate, halved by a 429, held by Retry-After.

Unit lane: the clock is injected, nothing sleeps.
"""

from __future__ import annotations

import pytest

from ingest.throttle import AdaptiveLimiter


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limiter(clock: Clock) -> AdaptiveLimiter:
    return AdaptiveLimiter(64, minimum=2, clock=clock)


def finish(
    limiter: AdaptiveLimiter, *, throttled: bool = False, retry_after: float | None = None
) -> None:
    limiter.take(1)
    limiter.release(throttled=throttled, retry_after=retry_after)


def test_all_slots_are_free_at_first(limiter: AdaptiveLimiter) -> None:
    assert limiter.free_slots() == 64


def test_requests_in_flight_use_slots(limiter: AdaptiveLimiter) -> None:
    limiter.take(10)
    assert limiter.free_slots() == 54
    limiter.release()
    assert limiter.free_slots() == 55


def test_429_halves_the_limit(limiter: AdaptiveLimiter) -> None:
    finish(limiter, throttled=True)
    assert limiter.limit == 32
    assert limiter.free_slots() == 32
    assert limiter.throttled_total == 1


def test_429s_a_second_apart_halve_again(limiter: AdaptiveLimiter, clock: Clock) -> None:
    for _ in range(3):
        finish(limiter, throttled=True)
        clock.advance(1.0)
    assert limiter.limit == 8


def test_a_burst_of_429s_from_one_round_halves_once(limiter: AdaptiveLimiter) -> None:
    for _ in range(64):
        finish(limiter, throttled=True)
    assert limiter.limit == 32
    assert limiter.throttled_total == 64


def test_limit_never_drops_below_the_minimum(limiter: AdaptiveLimiter, clock: Clock) -> None:
    for _ in range(20):
        finish(limiter, throttled=True)
        clock.advance(1.0)
    assert limiter.limit == 2
    assert limiter.free_slots() == 2


def test_429_with_retry_after_holds_every_new_request(
    limiter: AdaptiveLimiter, clock: Clock
) -> None:
    finish(limiter, throttled=True, retry_after=5)
    assert limiter.free_slots() == 0
    assert limiter.held_for() == 5
    clock.advance(4.9)
    assert limiter.free_slots() == 0
    assert limiter.held_for() == pytest.approx(0.1)


def test_hold_ends_when_retry_after_has_passed(limiter: AdaptiveLimiter, clock: Clock) -> None:
    finish(limiter, throttled=True, retry_after=5)
    clock.advance(5)
    assert limiter.held_for() == 0
    assert limiter.free_slots() == 32


def test_a_shorter_retry_after_does_not_cut_a_longer_hold(
    limiter: AdaptiveLimiter, clock: Clock
) -> None:
    finish(limiter, throttled=True, retry_after=10)
    finish(limiter, throttled=True, retry_after=1)
    clock.advance(2)
    assert limiter.free_slots() == 0
    assert limiter.held_for() == 8


def test_429_without_retry_after_slows_but_does_not_hold(limiter: AdaptiveLimiter) -> None:
    finish(limiter, throttled=True)
    assert limiter.held_for() == 0
    assert limiter.free_slots() > 0


def test_successes_win_back_about_one_slot_per_window(limiter: AdaptiveLimiter) -> None:
    finish(limiter, throttled=True)  # 64 -> 32
    for _ in range(32):
        finish(limiter)
    assert 32.9 < limiter.limit < 33.1
    assert limiter.free_slots() == 32 or limiter.free_slots() == 33


def test_recovery_to_the_maximum_takes_many_successes(limiter: AdaptiveLimiter) -> None:
    finish(limiter, throttled=True)  # 64 -> 32
    successes = 0
    while limiter.limit < 64:
        finish(limiter)
        successes += 1
    # Roughly the sum of the window sizes from 32 to 64.
    assert 1000 < successes < 1600


def test_recovery_never_goes_above_the_maximum(limiter: AdaptiveLimiter) -> None:
    finish(limiter, throttled=True)
    for _ in range(5000):
        finish(limiter)
    assert limiter.limit == 64
    assert limiter.free_slots() == 64


def test_success_at_the_maximum_changes_nothing(limiter: AdaptiveLimiter) -> None:
    finish(limiter)
    assert limiter.limit == 64
