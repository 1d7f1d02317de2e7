"""A refund is never sent before its payment, and never waits for a payment that is gone.

Integration lane: the session's redis-server; the worker's own script wrappers stand in for
a worker (claim, then acknowledge with a chosen answer), so each path is one step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio
from conftest import run_on

from ingest import keys
from ingest.deadletter import DeadLetterStore
from ingest.delivery import Outcome, Verdict
from ingest.erasure import build_request, erase_local
from ingest.jobs import Claimed
from ingest.models import Payment, validate_payment
from ingest.producer import Producer
from ingest.retry import RetryPolicy
from ingest.scripts import ack, claim
from ingest.settings import Settings
from ingest.stats import read_accounting
from ingest.worker import decide

pytestmark = pytest.mark.integration

T = TypeVar("T")
NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
DELIVERED = Outcome(Verdict.DELIVERED, 200, "Payment recorded")
REJECTED = Outcome(Verdict.PERMANENT, 422, "invalid payment: amount")


def payment(transaction_id: str, **changes: Any) -> Payment:
    fields: dict[str, Any] = {"amount": "29.99", "currency": "USD"}
    fields.update(changes)
    return validate_payment(transaction_id=transaction_id, now=NOW, **fields)


def claim_all(redis_url: str, queue: str = "payments") -> list[Claimed]:
    now = time.time()
    k = keys.QueueKeys(queue)
    return run_on(
        redis_url,
        lambda conn: claim(conn, k, now=now, lease_until=now + 30, worker="w", limit=100),
    )


def acknowledge(
    redis_url: str, claimed: Claimed, outcome: Outcome, queue: str = "payments"
) -> None:
    now = time.time()
    policy = RetryPolicy(max_attempts=1, base=1.0, cap=1.0)
    entry = decide(claimed, outcome, now=now, policy=policy, random=lambda: 0.5)
    k = keys.QueueKeys(queue)
    stale = run_on(
        redis_url, lambda conn: ack(conn, k, [entry], now=now, worker="w", dedup_window=3600)
    )
    assert stale == 0


def queued_ids(client: redis.Redis, queue: str = "payments") -> list[str]:
    return [raw.decode() for raw in client.lrange(keys.QueueKeys(queue).queue, 0, -1)]


@pytest.fixture
def producer(redis_url: str) -> Iterator[Producer]:
    made = Producer(Settings(redis_url=redis_url), spool=False)
    yield made
    made.close()


def dead_payment(producer: Producer, redis_url: str, transaction_id: str) -> Payment:
    """A payment the API refused (422): in the dead-letter store."""
    event = payment(transaction_id)
    producer.enqueue(event)
    [claimed] = claim_all(redis_url)
    acknowledge(redis_url, claimed, REJECTED)
    return event


# -- 2. through the dead-letter store ---------------------------------------------------------


def test_refund_of_a_dead_lettered_payment_is_deferred(
    producer: Producer, redis_url: str, redis_client: redis.Redis
) -> None:
    dead_payment(producer, redis_url, "pi_dead")
    refund = producer.enqueue(payment("pi_dead", refunded=True))
    assert refund.status == "deferred"
    assert queued_ids(redis_client) == []


def test_refund_deferred_on_a_payment_stays_deferred_when_the_payment_is_dead_lettered(
    producer: Producer, redis_url: str, redis_client: redis.Redis
) -> None:
    producer.enqueue(payment("pi_refused"))
    refund = producer.enqueue(payment("pi_refused", refunded=True))
    [claimed] = claim_all(redis_url)
    acknowledge(redis_url, claimed, REJECTED)
    assert queued_ids(redis_client) == []
    assert redis_client.zscore(keys.QueueKeys("payments").deferred, refund.job_id) is not None


def test_refund_of_a_replayed_payment_is_released_once_the_payment_is_delivered(
    producer: Producer, redis_url: str, redis_client: redis.Redis
) -> None:
    paid = dead_payment(producer, redis_url, "pi_replayed")
    refund = producer.enqueue(payment("pi_replayed", refunded=True))
    DeadLetterStore(redis_client, "payments").replay([paid.job_id])
    assert queued_ids(redis_client) == [paid.job_id]
    [claimed] = claim_all(redis_url)
    acknowledge(redis_url, claimed, DELIVERED)
    assert queued_ids(redis_client) == [refund.job_id]


def test_refund_of_a_purged_payment_is_dead_lettered_with_the_reason(
    producer: Producer, redis_url: str, redis_client: redis.Redis
) -> None:
    paid = dead_payment(producer, redis_url, "pi_purged")
    refund = producer.enqueue(payment("pi_purged", refunded=True))
    store = DeadLetterStore(redis_client, "payments")
    store.purge([paid.job_id])
    letter = store.get(refund.job_id)
    assert (letter.reason, letter.transaction_id, letter.attempts) == (
        "payment_purged",
        "pi_purged",
        0,
    )
    assert redis_client.zcard(keys.QueueKeys("payments").deferred) == 0
    assert read_accounting(redis_client, "payments").lost == 0


def test_stats_count_refunds_waiting_on_a_dead_payment(
    producer: Producer, redis_url: str, redis_client: redis.Redis
) -> None:
    dead_payment(producer, redis_url, "pi_counted")
    producer.enqueue(payment("pi_counted", refunded=True))
    accounting = read_accounting(redis_client, "payments")
    assert (accounting.deferred, accounting.deferred_on_dead, accounting.lost) == (1, 1, 0)


# -- 3. erasure ------------------------------------------------------------------------------


def test_erasing_a_payment_dead_letters_the_refund_deferred_on_it(
    producer: Producer, redis_client: redis.Redis
) -> None:
    producer.enqueue(payment("pi_erased", datafast_visitor_id="visitor-1"))
    refund = producer.enqueue(payment("pi_erased", refunded=True))  # a back-office refund
    request = build_request(visitor_id="visitor-1", all_time=True)
    erase_local(redis_client, "payments", request)
    assert redis_client.zcard(keys.QueueKeys("payments").deferred) == 0
    letter = DeadLetterStore(redis_client, "payments").get(refund.job_id)
    assert letter.reason == "payment_erased"
    assert read_accounting(redis_client, "payments").lost == 0


def test_erasing_a_deferred_refund_leaves_nothing_waiting_on_its_payment(
    producer: Producer, redis_url: str, redis_client: redis.Redis
) -> None:
    paid = producer.enqueue(payment("pi_kept"))
    producer.enqueue(payment("pi_kept", refunded=True, datafast_visitor_id="visitor-2"))
    erase_local(redis_client, "payments", build_request(visitor_id="visitor-2", all_time=True))
    assert not redis_client.exists(keys.job_key(paid.job_id) + ":dependents")
    [claimed] = claim_all(redis_url)
    acknowledge(redis_url, claimed, DELIVERED)
    assert queued_ids(redis_client) == []


# -- 4. a refund in another queue ------------------------------------------------------------


def test_refund_in_another_queue_is_released_into_its_own_queue(
    producer: Producer, redis_url: str, redis_client: redis.Redis
) -> None:
    paid = producer.enqueue(payment("pi_two_queues"))
    refunds = Producer(Settings(redis_url=redis_url, queue="refunds"), spool=False)
    try:
        refund = refunds.enqueue(payment("pi_two_queues", refunded=True))
    finally:
        refunds.close()
    assert refund.status == "deferred"
    [claimed] = claim_all(redis_url)
    assert claimed.job_id == paid.job_id
    acknowledge(redis_url, claimed, DELIVERED)
    assert queued_ids(redis_client, "refunds") == [refund.job_id]
    assert redis_client.zcard(keys.QueueKeys("refunds").deferred) == 0
    assert json.loads(redis_client.hget(keys.job_key(refund.job_id), "data") or "[]")


def test_refund_in_another_queue_waits_for_a_payment_dead_in_the_first(
    producer: Producer, redis_url: str, redis_client: redis.Redis
) -> None:
    # Found by the lifecycle model (tests/test_lifecycle_model.py).
    dead_payment(producer, redis_url, "pi_dead_elsewhere")
    refunds = Producer(Settings(redis_url=redis_url, queue="refunds"), spool=False)
    try:
        refund = refunds.enqueue(payment("pi_dead_elsewhere", refunded=True))
    finally:
        refunds.close()
    assert refund.status == "deferred"
    assert read_accounting(redis_client, "refunds").deferred_on_dead == 1
