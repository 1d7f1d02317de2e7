"""The Payments API down for a while: events wait in retries and are delivered afterwards."""

from __future__ import annotations

import time

import pytest

from .harness import FaultStack, assert_accounted, payment_ids

pytestmark = pytest.mark.integration

MAX_ATTEMPTS = 20
OUTAGE = 3.0


def test_api_down_for_a_while_dead_letters_nothing_and_delivers_everything_after(
    stack: FaultStack,
) -> None:
    total = 1500
    stack.sandbox.set_faults(latency_ms=5)
    stack.enqueue(payment_ids("outage", total))
    # Backoff capped at 2 s: 20 attempts take ~15 s, far longer than the outage.
    stack.start_worker(max_attempts=str(MAX_ATTEMPTS), backoff_max="2.0")
    stack.wait_for("a fifth delivered", lambda a: a.delivered >= total // 5, timeout=60)

    stack.sandbox.stop()  # connections refused from now on
    time.sleep(OUTAGE)
    during = stack.count("API down")
    assert_accounted(during, drained=False)
    acc = during.accounting
    assert acc is not None
    assert acc.retried > 0, "the outage was never noticed"
    assert during.dead == 0, "dead-lettered during a short outage, before max attempts"
    stack.sandbox.start()  # the same port

    stack.wait_drained(timeout=60)
    count = stack.count("API back")
    assert_accounted(count)
    assert count.dead == 0
    assert count.delivered == total
