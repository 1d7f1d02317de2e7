"""The per-minute series the scripts keep for the console's charts, against a real Redis.

``ACK`` counts deliveries and dead letters into ``ingest:{q}:minute:{m}``; ``RECLAIM`` (every
worker's housekeeping) samples the queue's depth and its oldest event's age into the same
hash. Each test drives the scripts at chosen moments, so minute boundaries are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TypeVar

import pytest
import redis
import redis.asyncio
from conftest import run_on

from ingest import keys
from ingest.jobs import job_data, job_description
from ingest.models import validate_payment
from ingest.scripts import (
    Acknowledgement,
    Dead,
    Delivered,
    Enqueue,
    EnqueueEvent,
    Retry,
    ack,
    claim,
    reclaim,
)

pytestmark = pytest.mark.integration

QUEUE = keys.QueueKeys("payments")
MINUTE = 29_613_600  # a unix minute: 2026-04-22 00:00 UTC
T0 = MINUTE * 60.0
WORKER = "series-worker"
FIELDS = {b"delivered", b"dead_lettered", b"depth", b"oldest_age"}
T = TypeVar("T")


def enqueue(client: redis.Redis, transaction_ids: Sequence[str], *, at: float) -> list[str]:
    """Enqueue payments through the ENQUEUE script as if at unix time ``at``."""
    script = Enqueue(QUEUE)
    ids = []
    for transaction_id in transaction_ids:
        payment = validate_payment(amount="9.99", currency="EUR", transaction_id=transaction_id)
        call = script.arguments(
            EnqueueEvent(
                job_id=payment.job_id,
                data=job_data(payment),
                website=keys.DEFAULT_SITE,
                description=job_description(payment),
                refund=False,
                payment_job_id=payment.job_id,
                now=datetime.fromtimestamp(at, UTC),
            )
        )
        assert script.run(client, call) == 1
        ids.append(payment.job_id)
    return ids


def claim_all(redis_url: str, *, at: float, worker: str = WORKER) -> list[str]:
    claimed = run_on(
        redis_url,
        lambda conn: claim(conn, QUEUE, now=at, lease_until=at + 600, worker=worker, limit=1000),
    )
    return [c.job_id for c in claimed]


def acknowledge(
    redis_url: str, batch: Sequence[Acknowledgement], *, at: float, worker: str = WORKER
) -> None:
    stale = run_on(
        redis_url,
        lambda conn: ack(conn, QUEUE, batch, now=at, worker=worker, dedup_window=0),
    )
    assert stale == 0


def sample(redis_url: str, *, at: float) -> None:
    run_on(redis_url, lambda conn: reclaim(conn, QUEUE, now=at))


def minute(client: redis.Redis, m: int) -> dict[bytes, bytes]:
    return client.hgetall(QUEUE.minute(m))


def dead(job_id: str) -> Dead:
    return Dead(job_id, {"job_id": job_id, "reason": "rejected"})


# -- counters kept by ACK -------------------------------------------------------------------------


def test_ack_counts_deliveries_and_dead_letters_in_the_minute_of_its_moment(
    redis_url: str, redis_client: redis.Redis
) -> None:
    ids = enqueue(redis_client, ["pi_a", "pi_b", "pi_c"], at=T0)
    assert claim_all(redis_url, at=T0 + 1) == ids
    acknowledge(redis_url, [Delivered(ids[0]), Delivered(ids[1]), dead(ids[2])], at=T0 + 30)
    assert minute(redis_client, MINUTE) == {b"delivered": b"2", b"dead_lettered": b"1"}


def test_every_workers_batches_add_up_in_the_same_minute(
    redis_url: str, redis_client: redis.Redis
) -> None:
    first = enqueue(redis_client, ["pi_1", "pi_2"], at=T0)
    claim_all(redis_url, at=T0 + 1, worker="worker-a")
    second = enqueue(redis_client, ["pi_3"], at=T0 + 2)
    claim_all(redis_url, at=T0 + 3, worker="worker-b")
    acknowledge(redis_url, [Delivered(i) for i in first], at=T0 + 10, worker="worker-a")
    acknowledge(redis_url, [Delivered(second[0])], at=T0 + 11, worker="worker-b")
    assert minute(redis_client, MINUTE)[b"delivered"] == b"3"


def test_an_ack_a_millisecond_before_the_minute_counts_in_the_minute_before(
    redis_url: str, redis_client: redis.Redis
) -> None:
    ids = enqueue(redis_client, ["pi_early", "pi_on_time"], at=T0 - 10)
    claim_all(redis_url, at=T0 - 5)
    acknowledge(redis_url, [Delivered(ids[0])], at=T0 - 0.001)
    acknowledge(redis_url, [Delivered(ids[1])], at=T0)
    assert minute(redis_client, MINUTE - 1) == {b"delivered": b"1"}
    assert minute(redis_client, MINUTE) == {b"delivered": b"1"}


def test_a_batch_without_deliveries_or_dead_letters_writes_no_minute(
    redis_url: str, redis_client: redis.Redis
) -> None:
    ids = enqueue(redis_client, ["pi_retry"], at=T0)
    claim_all(redis_url, at=T0 + 1)
    acknowledge(redis_url, [Retry(ids[0], due=T0 + 60, attempts=1, history=[])], at=T0 + 2)
    assert redis_client.exists(QUEUE.minute(MINUTE)) == 0


def test_every_minute_expires_after_two_hours(redis_url: str, redis_client: redis.Redis) -> None:
    ids = enqueue(redis_client, ["pi_ttl", "pi_ttl_dead"], at=T0)
    claim_all(redis_url, at=T0 + 1)
    acknowledge(redis_url, [Delivered(ids[0])], at=T0 + 2)
    acknowledge(redis_url, [dead(ids[1])], at=T0 + 62)  # the next minute, created by a dead letter
    sample(redis_url, at=T0 + 125)  # and the one after, created by a sample
    for m in (MINUTE, MINUTE + 1, MINUTE + 2):
        assert keys.MINUTE_TTL - 5 < redis_client.ttl(QUEUE.minute(m)) <= keys.MINUTE_TTL
    assert keys.MINUTE_TTL == 2 * 3600


def test_a_minute_is_one_key_of_at_most_four_fields_whatever_the_traffic(
    redis_url: str, redis_client: redis.Redis
) -> None:
    for n in range(20):
        ids = enqueue(redis_client, [f"pi_{n}_{i}" for i in range(5)], at=T0 + n)
        sample(redis_url, at=T0 + n + 0.5)
        claim_all(redis_url, at=T0 + n + 0.6)
        acknowledge(
            redis_url,
            [
                Delivered(ids[0]),
                Delivered(ids[1]),
                dead(ids[2]),
                dead(ids[3]),
                Retry(ids[4], due=T0 + 3600, attempts=1, history=[]),
            ],
            at=T0 + n + 0.7,
        )
    series = list(redis_client.scan_iter(match=QUEUE.minute_prefix + "*"))
    assert series == [QUEUE.minute(MINUTE).encode()]
    assert set(minute(redis_client, MINUTE)) == FIELDS
    assert minute(redis_client, MINUTE)[b"delivered"] == b"40"
    assert minute(redis_client, MINUTE)[b"dead_lettered"] == b"40"


# -- gauges sampled by RECLAIM --------------------------------------------------------------------


def test_reclaim_samples_the_queue_depth_and_its_oldest_events_age(
    redis_url: str, redis_client: redis.Redis
) -> None:
    enqueue(redis_client, ["pi_old"], at=T0 - 90)
    enqueue(redis_client, ["pi_new_1", "pi_new_2"], at=T0 - 5)
    sample(redis_url, at=T0 + 10)
    assert minute(redis_client, MINUTE) == {b"depth": b"3", b"oldest_age": b"100.0"}


def test_reclaim_keeps_the_largest_sample_of_each_minute(
    redis_url: str, redis_client: redis.Redis
) -> None:
    enqueue(redis_client, ["pi_1", "pi_2", "pi_3"], at=T0)
    sample(redis_url, at=T0 + 20)
    claim_all(redis_url, at=T0 + 21)
    sample(redis_url, at=T0 + 40)  # the queue is empty now
    sample(redis_url, at=T0 + 60)  # the next minute
    assert minute(redis_client, MINUTE) == {b"depth": b"3", b"oldest_age": b"20.0"}
    assert minute(redis_client, MINUTE + 1) == {b"depth": b"0", b"oldest_age": b"0.0"}


def test_a_sample_that_is_not_a_number_is_replaced_not_an_error(
    redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.hset(QUEUE.minute(MINUTE), mapping={"depth": "<b>", "oldest_age": "nan?"})
    enqueue(redis_client, ["pi_1"], at=T0)
    sample(redis_url, at=T0 + 5)
    assert minute(redis_client, MINUTE) == {b"depth": b"1", b"oldest_age": b"5.0"}


@pytest.mark.parametrize(
    "enqueued",
    [
        datetime(2024, 2, 29, 23, 59, 59, 500000, tzinfo=UTC),  # a leap day's last second
        datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # the year's last microsecond
        datetime(2026, 3, 1, tzinfo=UTC),  # the day after February
        datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),  # past 32-bit unix time
    ],
)
def test_the_oldest_age_reads_rqs_timestamps_across_calendar_edges(
    redis_url: str, redis_client: redis.Redis, enqueued: datetime
) -> None:
    at = enqueued.timestamp()
    enqueue(redis_client, ["pi_edge"], at=at)
    sample(redis_url, at=at + 42.04)
    m = keys.minute_of(at + 42.04)
    assert minute(redis_client, m)[b"oldest_age"] == b"42.0"
