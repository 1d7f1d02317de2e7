"""ingest.ratelimit: the shared token bucket per credential (the ACQUIRE Lua), on a real
Redis with an injected clock: every call passes ``now``, nothing sleeps."""

from __future__ import annotations

import asyncio

import pytest
import redis

from ingest import keys
from ingest.ratelimit import SendRate, credential_id, read_send_rates
from ingest.scripts import Answers, BucketShape

NOW = 1_800_000_000.0
SHAPE = BucketShape(
    initial_rate=100.0,
    bucket_seconds=0.1,
    window_min=1.0,
    window_answers=10,
    window_max=5.0,
    ttl=3600,
    exhausted_429s=10,
)
QUEUE = keys.QueueKeys("payments")


@pytest.fixture
def limiter() -> SendRate:
    return SendRate(QUEUE, credential_id("df_key_a", None), SHAPE)


def test_a_fresh_credential_grants_one_bucket_of_permits_at_once(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    permits = limiter.acquire(redis_client, 50, now=NOW)
    assert (permits.granted, permits.rate) == (10, 100.0)
    assert permits.wait == pytest.approx(0.01)


def test_permits_refill_at_the_rate(redis_client: redis.Redis, limiter: SendRate) -> None:
    limiter.acquire(redis_client, 50, now=NOW)
    assert limiter.acquire(redis_client, 50, now=NOW + 0.05).granted == 5


def test_the_bucket_never_holds_more_than_its_size(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    limiter.acquire(redis_client, 50, now=NOW)
    assert limiter.acquire(redis_client, 50, now=NOW + 60).granted == 10


def test_permits_given_back_can_be_taken_again(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    limiter.acquire(redis_client, 10, now=NOW)
    assert limiter.acquire(redis_client, 4, now=NOW, unused=4).granted == 4


def test_every_worker_shares_one_bucket(redis_client: redis.Redis, redis_url: str) -> None:
    credential = credential_id("df_key_a", None)
    first, second = SendRate(QUEUE, credential, SHAPE), SendRate(QUEUE, credential, SHAPE)
    other = redis.Redis.from_url(redis_url)
    try:
        assert first.acquire(redis_client, 6, now=NOW).granted == 6
        assert second.acquire(other, 6, now=NOW).granted == 4
    finally:
        other.close()


def test_two_credentials_are_limited_independently(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    other = SendRate(QUEUE, credential_id("df_key_b", None), SHAPE)
    limiter.acquire(redis_client, 10, now=NOW)
    limiter.store(redis_client, rate=1.0, hold_until=NOW + 30, learner="{}")
    assert limiter.acquire(redis_client, 10, now=NOW + 1).granted == 0
    assert other.acquire(redis_client, 10, now=NOW + 1).granted == 10


def test_a_stored_rate_applies_to_every_worker(redis_client: redis.Redis) -> None:
    credential = credential_id("df_key_a", None)
    SendRate(QUEUE, credential, SHAPE).store(
        redis_client, rate=1000.0, hold_until=0.0, learner="{}"
    )
    permits = SendRate(QUEUE, credential, SHAPE).acquire(redis_client, 500, now=NOW)
    assert (permits.granted, permits.rate, permits.learner) == (100, 1000.0, "{}")


def test_a_held_credential_grants_nothing_and_says_for_how_long(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    limiter.store(redis_client, rate=100.0, hold_until=NOW + 3, learner="{}")
    permits = limiter.acquire(redis_client, 5, now=NOW)
    assert permits.granted == 0
    assert permits.wait == pytest.approx(3.0)


def test_a_hold_is_released_when_its_retry_after_has_passed(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    limiter.store(redis_client, rate=100.0, hold_until=NOW + 3, learner="{}")
    assert limiter.acquire(redis_client, 5, now=NOW + 3).granted == 5


def test_a_window_closes_for_exactly_one_caller(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    limiter.acquire(redis_client, 10, now=NOW)
    limiter.acquire(redis_client, 0, now=NOW + 0.5, answers=Answers(ok=8, throttled=2))
    first = limiter.acquire(redis_client, 0, now=NOW + 1.0, answers=Answers(ok=1))
    second = limiter.acquire(redis_client, 0, now=NOW + 1.0)
    assert first.window is not None
    assert (first.window.ok, first.window.throttled, first.window.granted) == (9, 2, 10)
    assert first.window.seconds == pytest.approx(1.0)
    assert second.window is None


def test_answers_to_a_closed_windows_permits_count_in_no_window(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    first = limiter.acquire(redis_client, 10, now=NOW)
    closing = limiter.acquire(
        redis_client, 0, now=NOW + 1.0, answers=Answers(ok=10, window=first.window_start)
    )
    assert closing.window is not None
    assert closing.window.ok == 10
    assert closing.window_start != first.window_start
    late = Answers(throttled=10, window=first.window_start)  # after a hold, say
    limiter.acquire(redis_client, 0, now=NOW + 1.5, answers=late)
    on_time = Answers(ok=10, window=closing.window_start)
    window = limiter.acquire(redis_client, 0, now=NOW + 2.0, answers=on_time).window
    assert window is not None
    assert (window.ok, window.throttled) == (10, 0)


def test_permits_taken_by_the_call_that_closes_a_window_count_in_the_next(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    first = limiter.acquire(redis_client, 4, now=NOW, answers=Answers(ok=10))
    closing = limiter.acquire(redis_client, 6, now=NOW + 1.0)
    assert closing.window is not None
    assert closing.window.granted == 4
    answers = Answers(ok=10, window=closing.window_start)
    window = limiter.acquire(redis_client, 0, now=NOW + 2.0, answers=answers).window
    assert first.window_start != closing.window_start
    assert window is not None
    assert window.granted == 6


def test_a_credential_is_held_at_once_when_two_in_three_of_a_windows_answers_are_429(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    limiter.acquire(redis_client, 0, now=NOW, answers=Answers(ok=4, throttled=9))
    assert limiter.acquire(redis_client, 0, now=NOW + 0.1).hold_until == 0  # 9 429s: few
    exhausted = limiter.acquire(redis_client, 0, now=NOW + 0.1, answers=Answers(throttled=1))
    assert exhausted.hold_until == pytest.approx(NOW + 1.1)  # no Retry-After: a second
    assert exhausted.window is not None  # no permits of it unanswered: judged at once
    assert exhausted.window.held
    assert exhausted.window.throttled == 10


def test_a_credential_is_held_at_once_when_429s_are_twice_the_200s_since_the_first(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    # A window that began on a refilled bucket: its first answers are all 200, so "most
    # of all its answers" came 0.8 s and hundreds of 429s after the bucket ran dry.
    limiter.acquire(redis_client, 0, now=NOW, answers=Answers(ok=30))
    limiter.acquire(redis_client, 0, now=NOW + 0.05, answers=Answers(ok=2, throttled=4))
    assert limiter.acquire(redis_client, 0, now=NOW + 0.06).hold_until == 0  # 4 429s: few
    dry = limiter.acquire(
        redis_client, 0, now=NOW + 0.07, answers=Answers(ok=2, throttled=6, retry_after=2.0)
    )
    assert dry.hold_until == pytest.approx(NOW + 2.07)
    assert dry.window is not None
    assert (dry.window.ok, dry.window.throttled, dry.window.held) == (34, 10, True)


def test_429s_as_many_as_the_200s_since_the_first_do_not_hold(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    # A probe over the limit: the learner cuts it when the window closes. A hold of a
    # second and a cut by half cost four busy workers more than the 429s it saved.
    limiter.acquire(redis_client, 0, now=NOW, answers=Answers(ok=30))
    over = limiter.acquire(redis_client, 0, now=NOW + 0.1, answers=Answers(ok=8, throttled=10))
    assert over.hold_until == 0
    assert over.window is None


def exhaust(redis_client: redis.Redis, limiter: SendRate) -> tuple[str, float]:
    """Take 20 permits in one window, and report 10 429s for them: the window it holds,
    and when its hold ends."""
    first = limiter.acquire(redis_client, 10, now=NOW)
    limiter.acquire(redis_client, 10, now=NOW + 0.1)
    answers = Answers(throttled=10, retry_after=1.0, window=first.window_start)
    held = limiter.acquire(redis_client, 5, now=NOW + 0.2, answers=answers)
    assert held.granted == 0
    assert held.window is None  # 10 of its 20 permits answered: the rest are on their way
    return first.window_start, held.hold_until


def test_a_held_window_is_judged_once_its_permits_are_answered(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    # Judged as it held, it had the first answers only (4 workers at 7,680/s: 71 of 912
    # permits), and the limit taken from them was a quarter of the API's.
    window, hold_until = exhaust(redis_client, limiter)
    assert hold_until == pytest.approx(NOW + 1.2)
    late = Answers(ok=3, throttled=4, window=window)
    assert limiter.acquire(redis_client, 0, now=NOW + 0.3, answers=late).window is None
    last = Answers(ok=1, throttled=0, window=window)  # 18 of 20: judged
    closed = limiter.acquire(redis_client, 0, now=NOW + 0.4, answers=last).window
    assert closed is not None
    assert (closed.ok, closed.throttled, closed.granted, closed.held) == (4, 14, 20, True)
    assert closed.seconds == pytest.approx(0.2)  # sent in until it held, not until judged


def test_a_held_window_is_judged_when_its_hold_ends_and_that_call_takes_no_permit(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    _, hold_until = exhaust(redis_client, limiter)
    assert limiter.acquire(redis_client, 5, now=hold_until - 0.01).granted == 0
    ended = limiter.acquire(redis_client, 5, now=hold_until)
    assert ended.window is not None
    assert ended.window.held
    assert ended.granted == 0  # at the rate the learner sets now, not the one before
    assert limiter.acquire(redis_client, 5, now=hold_until).granted == 5


def test_a_closed_window_tells_the_200s_it_counted_before_its_first_429(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    # Those 200s spent what the bucket had left; the answers since tell what the API
    # accepts once it is empty (ingest.ratelearner).
    limiter.acquire(redis_client, 0, now=NOW, answers=Answers(ok=30))
    limiter.acquire(redis_client, 0, now=NOW + 0.5, answers=Answers(ok=5, throttled=2))
    limiter.acquire(redis_client, 0, now=NOW + 0.7, answers=Answers(ok=20, throttled=3))
    closed = limiter.acquire(redis_client, 0, now=NOW + 1.0).window
    assert closed is not None
    assert (closed.ok, closed.throttled, closed.ok_before_429) == (55, 5, 30)


def test_a_closed_window_without_a_429_tells_no_200s_before_one(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    limiter.acquire(redis_client, 0, now=NOW, answers=Answers(ok=30))
    closed = limiter.acquire(redis_client, 0, now=NOW + 1.0).window
    assert closed is not None
    assert closed.ok_before_429 is None


def test_a_window_of_sporadic_429s_among_200s_stays_open(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    for i in range(20):
        answered = limiter.acquire(
            redis_client, 0, now=NOW + i * 0.01, answers=Answers(ok=9, throttled=1)
        )
        assert answered.window is None


def test_the_next_window_starts_with_no_429_seen(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    limiter.acquire(redis_client, 0, now=NOW, answers=Answers(ok=40))
    limiter.acquire(redis_client, 0, now=NOW + 0.1, answers=Answers(throttled=1))
    assert limiter.acquire(redis_client, 0, now=NOW + 1.1).window is not None
    # Had the first window's first 429 (after 40 200s) been kept, these 10 429s would
    # outnumber the 200s "since" it and close this window at once.
    mixed = limiter.acquire(redis_client, 0, now=NOW + 1.2, answers=Answers(ok=30, throttled=10))
    assert mixed.window is None


def test_a_window_stays_open_until_half_of_its_permits_are_answered(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    # Judged on its first answers only, a window flew blind: four workers at 3,840/s had
    # 61 of 909 permits answered, and the limit taken from them was half the API's.
    first = limiter.acquire(redis_client, 10, now=NOW)
    for step in range(1, 4):
        limiter.acquire(redis_client, 10, now=NOW + step * 0.1)  # 40 permits in all
    answers = Answers(ok=12, window=first.window_start)  # enough answers, a third answered
    assert limiter.acquire(redis_client, 0, now=NOW + 1.0, answers=answers).window is None
    answers = Answers(ok=8, window=first.window_start)  # half
    closed = limiter.acquire(redis_client, 0, now=NOW + 1.1, answers=answers).window
    assert closed is not None
    assert (closed.ok, closed.granted) == (20, 40)


def test_a_stored_window_minimum_closes_the_next_windows_sooner(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    limiter.acquire(redis_client, 0, now=NOW, answers=Answers(ok=20))
    limiter.store(redis_client, rate=100.0, hold_until=0.0, learner="{}", window_min=0.25)
    assert limiter.acquire(redis_client, 0, now=NOW + 0.2).window is None
    assert limiter.acquire(redis_client, 0, now=NOW + 0.3).window is not None


def test_a_window_with_too_few_answers_stays_open_until_its_longest(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    limiter.acquire(redis_client, 0, now=NOW, answers=Answers(ok=3))
    assert limiter.acquire(redis_client, 0, now=NOW + 2).window is None
    assert limiter.acquire(redis_client, 0, now=NOW + 5).window is not None


def test_a_window_keeps_the_longest_retry_after_and_the_lowest_header_rate(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    limiter.acquire(redis_client, 0, now=NOW, answers=Answers(throttled=5, retry_after=2.0))
    limiter.acquire(redis_client, 0, now=NOW, answers=Answers(ok=5, header_rate=40.0))
    limiter.acquire(redis_client, 0, now=NOW, answers=Answers(ok=1, header_rate=50.0))
    window = limiter.acquire(redis_client, 0, now=NOW + 1, answers=Answers(throttled=1)).window
    assert window is not None
    assert (window.retry_after, window.header_rate) == (2.0, 40.0)


def test_the_redis_key_is_a_hash_of_the_credential_never_the_key(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    limiter.acquire(redis_client, 1, now=NOW)
    names = [keys.text(k) for k in redis_client.keys("*")]
    assert not any("df_key_a" in name for name in names)
    assert keys.send_rate(limiter.credential) in names


def test_an_account_token_is_one_credential_per_website() -> None:
    site_a, site_b = "a" * 24, "b" * 24
    assert credential_id("dft_token", site_a) != credential_id("dft_token", site_b)
    assert credential_id("df_key", None) == credential_id("df_key", None)


def test_read_send_rates_lists_each_credential_with_its_hold(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    limiter.acquire(redis_client, 1, now=NOW)
    limiter.store(redis_client, rate=250.0, hold_until=NOW + 4, learner="{}")
    [view] = read_send_rates(redis_client, "payments", now=NOW + 1)
    assert (view.credential, view.rate, view.hold_seconds) == (limiter.credential, 250.0, 3.0)


def test_acquire_async_takes_permits_like_acquire(redis_url: str, limiter: SendRate) -> None:
    import redis.asyncio

    async def scenario() -> tuple[int, float]:
        aconn = redis.asyncio.Redis.from_url(redis_url)
        try:
            granted = (await limiter.acquire_async(aconn, 3, now=NOW)).granted
            await limiter.store_async(aconn, rate=5.0, hold_until=0.0, learner="{}")
            return granted, (await limiter.acquire_async(aconn, 0, now=NOW)).rate
        finally:
            await aconn.aclose()

    assert asyncio.run(scenario()) == (3, 5.0)


def test_storing_a_decision_never_shortens_a_hold_acquire_set_since(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    # ACQUIRE may hold the credential between the call that closed a window and the
    # learner's decision on it: that decision saw no hold, and must not end this one.
    _, hold_until = exhaust(redis_client, limiter)
    limiter.store(redis_client, rate=50.0, hold_until=0.0, learner="{}")
    still = limiter.acquire(redis_client, 5, now=hold_until - 0.1)
    assert (still.granted, still.hold_until) == (0, pytest.approx(hold_until))
    limiter.store(redis_client, rate=50.0, hold_until=hold_until + 5, learner="{}")
    assert limiter.acquire(redis_client, 5, now=hold_until + 1).hold_until == hold_until + 5
