"""Producer-side Prometheus metrics: enqueued by result, rejected by field, spooled, the
spool gauge and Redis errors. Read as before/after deltas of the default registry."""

from __future__ import annotations

import pytest

from ingest.errors import ValidationError
from ingest.producer import enqueue_payment, enqueue_payments

from .conftest import MakeProducer, fields, metric, metric_total

pytestmark = pytest.mark.integration

EVENTS = "ingest_producer_events_total"


def test_queued_and_duplicate_enqueues_are_counted_by_result(
    redis_url: str, make_producer: MakeProducer
) -> None:
    producer = make_producer(redis_url, producer_timeout=2.0)
    queued, duplicate = (
        metric(EVENTS, queue="payments", result="queued"),
        metric(EVENTS, queue="payments", result="duplicate"),
    )

    for _ in range(3):
        enqueue_payment(**fields("counted-once"), producer=producer)
    enqueue_payments([fields("counted-bulk"), fields("counted-once")], producer=producer)

    assert metric(EVENTS, queue="payments", result="queued") == queued + 2
    assert metric(EVENTS, queue="payments", result="duplicate") == duplicate + 3


def test_rejected_events_are_counted_by_field(redis_url: str, make_producer: MakeProducer) -> None:
    producer = make_producer(redis_url)
    amount = metric("ingest_producer_rejected_total", field="amount")
    currency = metric("ingest_producer_rejected_total", field="currency")

    with pytest.raises(ValidationError):
        enqueue_payment(amount="-5", currency="USD", transaction_id="r-1", producer=producer)
    enqueue_payments([fields("r-2", amount="x", currency="??")], producer=producer)

    assert metric("ingest_producer_rejected_total", field="amount") == amount + 2
    assert metric("ingest_producer_rejected_total", field="currency") == currency + 1


def test_spooled_events_are_counted_and_shown_in_the_spool_gauge(
    closed_redis_url: str, redis_url: str, make_producer: MakeProducer
) -> None:
    producer = make_producer(closed_redis_url)
    spooled = metric(EVENTS, queue="payments", result="spooled")
    gauge = metric("ingest_producer_spool_events")  # process-wide: other tests move it too

    for i in range(5):
        enqueue_payment(**fields(f"gauge-{i}"), producer=producer)
    enqueue_payments([fields("gauge-bulk-0"), fields("gauge-bulk-1")], producer=producer)

    assert metric(EVENTS, queue="payments", result="spooled") == spooled + 7
    assert metric("ingest_producer_spool_events") == gauge + 7
    producer.close()
    make_producer(redis_url).flush_spool()
    assert metric("ingest_producer_spool_events") == 0


def test_redis_errors_count_the_calls_that_failed_not_those_the_breaker_kept_away(
    closed_redis_url: str, make_producer: MakeProducer
) -> None:
    producer = make_producer(closed_redis_url, breaker_cooldown=60)
    errors = metric_total("ingest_producer_redis_errors_total")
    refused = metric("ingest_producer_redis_errors_total", queue="payments", kind="ConnectionError")

    for i in range(10):  # the first reaches for Redis; the open breaker spools the rest
        enqueue_payment(**fields(f"errors-{i}"), producer=producer)

    assert (
        metric("ingest_producer_redis_errors_total", queue="payments", kind="ConnectionError")
        == refused + 1
    )
    assert metric_total("ingest_producer_redis_errors_total") == errors + 1, (
        "calls that never touched Redis (breaker open) were counted as Redis errors"
    )
