"""``enqueue_payments([...])`` under a Redis outage: per-event results, the spool, and
each event queued once when the spool is flushed."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from ingest.producer import Rejected, enqueue_payments

from .conftest import MakeProducer, fields, queued_transaction_ids

pytestmark = pytest.mark.integration


def test_bulk_enqueue_while_redis_is_down_spools_the_valid_events_and_rejects_the_rest(
    closed_redis_url: str, make_producer: MakeProducer
) -> None:
    producer = make_producer(closed_redis_url)
    events: list[dict[str, Any]] = [
        fields("bulk-down-0"),
        fields("bulk-down-1", amount="lots"),
        fields("bulk-down-2"),
    ]

    results = enqueue_payments(events, producer=producer)

    assert [r.status for r in results] == ["spooled", "invalid", "spooled"]
    assert isinstance(results[1], Rejected)
    assert results[1].index == 1
    assert producer.spool is not None
    assert producer.spool.pending() == 2


def test_bulk_enqueue_spooled_during_an_outage_is_queued_once_in_order_after_a_flush(
    closed_redis_url: str,
    redis_url: str,
    redis_client: redis.Redis,
    make_producer: MakeProducer,
) -> None:
    producer = make_producer(closed_redis_url)
    first = [f"bulk-a-{i}" for i in range(300)]
    second = [f"bulk-b-{i}" for i in range(300)]
    enqueue_payments([fields(tx) for tx in first], producer=producer)
    # The same batch retried by an impatient caller, then the next one.
    enqueue_payments([fields(tx) for tx in first], producer=producer)
    enqueue_payments([fields(tx) for tx in second], producer=producer)
    producer.close()

    result = make_producer(redis_url).flush_spool()

    assert (result.events, result.queued, result.duplicates) == (900, 600, 300)
    assert queued_transaction_ids(redis_client) == first + second
