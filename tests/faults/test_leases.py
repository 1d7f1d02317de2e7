"""A lease that runs out while its request is in flight: the late answer must not count."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio

from ingest.scripts import reclaim

from .harness import FaultStack, assert_accounted, payment_ids

pytestmark = pytest.mark.integration

LATENCY = 3.0


async def reclaim_as_if_at(stack: FaultStack, moment: float) -> int:
    """Another worker's housekeeping, run at ``moment``: expired leases go back."""
    conn = redis.asyncio.Redis.from_url(stack.redis_url)
    try:
        return await reclaim(conn, stack.keys, now=moment)
    finally:
        await conn.aclose()


def test_answer_to_an_expired_claim_is_not_applied_to_the_same_workers_new_claim(
    stack: FaultStack,
) -> None:
    stack.sandbox.set_faults(latency_ms=LATENCY * 1000)
    stack.enqueue(payment_ids("lease", 4))
    worker = stack.start_worker(name="slowpoke", concurrency="8", request_timeout="10")
    stack.wait_for("4 requests in flight", lambda a: a.in_flight >= 4, timeout=20)
    time.sleep(0.3)  # the four POSTs have reached the API, which answers after 3 s

    # Their leases run out while the requests are in flight (as after a long pause of the
    # worker): another worker's housekeeping puts the events back on the queue, and this
    # worker, which has room, claims them again at once.
    assert asyncio.run(reclaim_as_if_at(stack, time.time() + 3600)) == 4
    time.sleep(LATENCY + 1.0)  # every request sent by now has been answered
    stack.wait_drained(timeout=30)
    time.sleep(0.5)  # and every answer acknowledged or skipped

    count = stack.count("expired leases")
    assert_accounted(count)
    acc = count.accounting
    assert acc is not None
    # Each event was sent once or twice, and only one answer per event may count. Whichever
    # is chosen, Redis's duplicate counter must agree with the API: counting the first
    # answer (new) while the second send is reported as a duplicate means an answer to the
    # expired claim was applied to the newer claim of the same event.
    assert acc.api_duplicates == count.duplicates, (
        f"an answer to an expired claim was applied to the same worker's newer claim: "
        f"Redis counted {acc.api_duplicates} duplicates, the API saw {count.duplicates}\n"
        f"{worker.output()[-1500:]}"
    )
