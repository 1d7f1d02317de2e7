"""Transient answers (429, 500, 503, timeouts, dropped connections) cost retries, never events."""

from __future__ import annotations

import pytest

from .harness import FaultStack, assert_accounted, payment_ids

pytestmark = pytest.mark.integration

MAX_ATTEMPTS = 12


def test_random_5xx_and_429_deliver_everything_within_the_attempt_budget(
    stack: FaultStack,
) -> None:
    stack.sandbox.set_faults(rate_500=0.10, rate_503=0.10, rate_429=0.10, retry_after=1, seed=7)
    stack.enqueue(payment_ids("flaky", 200))
    for _ in range(2):
        stack.start_worker(max_attempts=str(MAX_ATTEMPTS))

    stack.wait_drained(timeout=60)
    count = stack.count("5xx+429")
    assert_accounted(count)
    stats = stack.sandbox.stats()
    print(f"sandbox answers: {stats['by_status']}")

    assert count.delivered == count.enqueued
    assert count.dead == 0
    assert stats["by_status"].get("429", 0) > 0, "no 429 was injected: the test proved nothing"
    assert count.max_attempts_seen <= MAX_ATTEMPTS
    # Every POST the API saw is one attempt the queue accounted for: a delivery or a
    # scheduled retry. No hidden resends, and at most MAX_ATTEMPTS POSTs per event.
    acc = count.accounting
    assert acc is not None
    assert stats["requests"] == acc.delivered + acc.retried + acc.dead_lettered_total
    assert stats["requests"] <= count.enqueued * MAX_ATTEMPTS


def test_timeouts_and_dropped_connections_deliver_once_as_counted_by_the_api(
    stack: FaultStack,
) -> None:
    # The sandbox records each of these payments, then answers too late (slow_ms past the
    # worker's 1 s request timeout) or closes the connection: the worker cannot know it
    # was recorded and must send it again; the API reports the resend as a duplicate.
    stack.sandbox.set_faults(rate_timeout=0.08, slow_ms=2000, rate_drop=0.08, seed=11)
    tids = stack.enqueue(payment_ids("blip", 500))
    stack.start_worker(request_timeout="1.0")

    stack.wait_drained(timeout=60)
    count = stack.count("timeouts+drops")
    assert_accounted(count)
    stats = stack.sandbox.stats()
    print(
        f"sandbox: slow={stats['slow']} dropped={stats['dropped']} "
        f"recorded={stats['recorded']} duplicates={stats['duplicates']}"
    )

    assert count.delivered == count.enqueued
    assert count.dead == 0
    assert stats["slow"] > 0
    assert stats["dropped"] > 0
    # Delivered at least once, counted once: one record per transaction id...
    records = stack.sandbox.records()
    assert sorted(r["transaction_id"] for r in records) == sorted(tids)
    assert stats["recorded"] == len(tids)
    # ...while some were sent more than once and reported back as duplicates.
    assert count.duplicates > 0
    acc = count.accounting
    assert acc is not None
    assert acc.api_duplicates > 0
