"""A checkout never waits long on Redis: short timeouts, a circuit breaker, no retries.

Bounds are generous multiples of the configured timeout (see ``LATENCY_BOUND``): the point
is milliseconds against seconds, on a noisy 2-core machine.
"""

from __future__ import annotations

import time

import pytest
import redis

from ingest.embedded import RedisServer
from ingest.producer import enqueue_payment, enqueue_payments
from ingest.scripts import ENQUEUE

from .conftest import (
    LATENCY_BOUND,
    HangingRedis,
    MakeProducer,
    ReplyDroppingProxy,
    assert_each_queued_once,
    fields,
    metric,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_every_enqueue_returns_within_the_bound_and_is_spooled_while_redis_is_stopped(
    restartable_redis: RedisServer, make_producer: MakeProducer
) -> None:
    producer = make_producer(restartable_redis.url)
    restartable_redis.stop()

    slowest = 0.0
    for i in range(1000):
        started = time.perf_counter()
        receipt = enqueue_payment(**fields(f"down-{i}"), producer=producer)
        slowest = max(slowest, time.perf_counter() - started)
        assert receipt.status == "spooled", receipt

    assert slowest < LATENCY_BOUND
    assert producer.spool is not None
    assert producer.spool.pending() == 1000


def test_open_breaker_keeps_most_enqueues_away_from_a_stopped_redis(
    closed_redis_url: str, make_producer: MakeProducer
) -> None:
    producer = make_producer(closed_redis_url, breaker_cooldown=1.0)
    refused_before = metric(
        "ingest_producer_redis_errors_total", queue="payments", kind="ConnectionError"
    )

    started = time.monotonic()
    for i in range(500):
        assert enqueue_payment(**fields(f"breaker-{i}"), producer=producer).status == "spooled"
    elapsed = time.monotonic() - started

    attempts = metric(
        "ingest_producer_redis_errors_total", queue="payments", kind="ConnectionError"
    )
    # One attempt, then at most one probe per cooldown.
    assert attempts - refused_before <= 2 + elapsed / 1.0


def test_enqueue_returns_within_the_bound_when_redis_accepts_but_never_answers(
    hanging_redis: HangingRedis, make_producer: MakeProducer
) -> None:
    producer = make_producer(hanging_redis.url, breaker_cooldown=0.2)

    slowest = 0.0
    for i in range(40):
        started = time.perf_counter()
        receipt = enqueue_payment(**fields(f"hung-{i}"), producer=producer)
        slowest = max(slowest, time.perf_counter() - started)
        assert receipt.status == "spooled"
        time.sleep(0.01)

    assert slowest < LATENCY_BOUND


def test_open_breaker_keeps_most_enqueues_away_from_a_hung_redis(
    hanging_redis: HangingRedis, make_producer: MakeProducer
) -> None:
    producer = make_producer(hanging_redis.url, breaker_cooldown=1.0)

    started = time.monotonic()
    for i in range(200):
        enqueue_payment(**fields(f"hung-breaker-{i}"), producer=producer)
    elapsed = time.monotonic() - started

    # Each call that tried Redis opened a connection (the failed one is dropped).
    assert hanging_redis.connections() <= 2 + elapsed / 1.0


def test_bulk_enqueue_returns_within_the_bound_when_redis_never_answers(
    hanging_redis: HangingRedis, make_producer: MakeProducer
) -> None:
    # Without fsync: the subject is the wait on Redis, not 100 fdatasyncs on a busy disk.
    producer = make_producer(hanging_redis.url, spool_fsync=False)

    started = time.perf_counter()
    results = enqueue_payments([fields(f"hung-bulk-{i}") for i in range(100)], producer=producer)
    elapsed = time.perf_counter() - started

    assert [r.status for r in results] == ["spooled"] * 100
    assert elapsed < LATENCY_BOUND


def test_enqueue_that_timed_out_is_sent_to_redis_once_not_retried(
    hanging_redis: HangingRedis, make_producer: MakeProducer
) -> None:
    producer = make_producer(hanging_redis.url, breaker_cooldown=60)

    assert enqueue_payment(**fields("hung-once"), producer=producer).status == "spooled"

    # A client-side retry would reconnect after the timeout and send it again.
    assert hanging_redis.connections() == 1


def test_enqueue_whose_reply_was_lost_is_queued_once_after_the_spool_is_flushed(
    reply_dropping_proxy: ReplyDroppingProxy,
    redis_url: str,
    redis_client: redis.Redis,
    make_producer: MakeProducer,
) -> None:
    redis_client.script_load(ENQUEUE)  # so the first EVALSHA runs instead of NOSCRIPT
    redis_client.config_resetstat()  # the session's server: count this test's calls only
    producer = make_producer(reply_dropping_proxy.url, breaker_cooldown=60)

    def evalsha_calls() -> int:
        stats = redis_client.info("commandstats").get("cmdstat_evalsha", {"calls": 0})
        return int(stats["calls"])

    receipt = enqueue_payment(**fields("lost-reply"), producer=producer)

    assert receipt.status == "spooled"  # the client never heard back...
    wait_until(lambda: evalsha_calls() > 0, 5, "the proxy never forwarded the EVALSHA")
    time.sleep(0.3)  # room for a retry to arrive, if there were one
    assert evalsha_calls() == 1  # ...although Redis ran it, exactly once: no retry
    producer.close()  # lets another producer take its spool file
    result = make_producer(redis_url).flush_spool()
    assert (result.events, result.duplicates) == (1, 1)
    assert_each_queued_once(redis_client, {"lost-reply"})


def test_breaker_probes_redis_again_under_steady_traffic_once_it_is_back(
    restartable_redis: RedisServer, make_producer: MakeProducer
) -> None:
    producer = make_producer(restartable_redis.url, breaker_cooldown=0.2)
    restartable_redis.stop()
    assert enqueue_payment(**fields("before-restart"), producer=producer).status == "spooled"
    restartable_redis.restart()

    # A checkout every ~20 ms, for 15 cooldowns: well past the first half-open probe.
    statuses = []
    deadline = time.monotonic() + 3.0
    i = 0
    while time.monotonic() < deadline and "queued" not in statuses:
        statuses.append(enqueue_payment(**fields(f"steady-{i}"), producer=producer).status)
        i += 1
        time.sleep(0.02)

    assert "queued" in statuses, (
        f"all {len(statuses)} enqueues spooled for 3 s after Redis came back "
        f"(breaker cooldown 0.2 s): the breaker never let a probe through"
    )
