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


def test_a_window_closes_at_once_when_most_of_its_answers_are_429(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    limiter.acquire(redis_client, 0, now=NOW, answers=Answers(ok=9, throttled=9))
    assert limiter.acquire(redis_client, 0, now=NOW + 0.1).window is None  # 9 of 18: few
    exhausted = limiter.acquire(redis_client, 0, now=NOW + 0.1, answers=Answers(throttled=1))
    assert exhausted.window is not None
    assert exhausted.window.throttled == 10
    assert exhausted.window.seconds == pytest.approx(0.1)


def test_a_window_closes_at_once_when_429s_outnumber_the_200s_since_its_first_429(
    redis_client: redis.Redis, limiter: SendRate
) -> None:
    # A window that began on a refilled bucket: its first answers are all 200, so "most
    # of all its answers" came 0.8 s and hundreds of 429s after the bucket ran dry.
    limiter.acquire(redis_client, 0, now=NOW, answers=Answers(ok=30))
    limiter.acquire(redis_client, 0, now=NOW + 0.05, answers=Answers(ok=2, throttled=4))
    assert limiter.acquire(redis_client, 0, now=NOW + 0.06).window is None  # 4 429s: few
    dry = limiter.acquire(redis_client, 0, now=NOW + 0.07, answers=Answers(ok=2, throttled=6))
    assert dry.window is not None
    assert (dry.window.ok, dry.window.throttled) == (34, 10)
    assert dry.window.seconds == pytest.approx(0.07)


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
