"""End to end: checkouts while Redis is stopped are spooled, and once Redis is back every
one of them reaches the Payments API (the sandbox) exactly once, through a real worker."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from ingest.embedded import RedisServer
from ingest.producer import enqueue_payment
from ingest.sandbox import DEFAULT_WEBSITE_KEY, SandboxServer

from .conftest import (
    MakeProducer,
    assert_each_queued_once,
    client_for,
    close_client,
    fields,
    ingest_environment,
    run_ingest,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_events_spooled_while_redis_was_stopped_are_delivered_once_each_after_it_restarts(
    restartable_redis: RedisServer,
    sandbox: SandboxServer,
    spool_dir: Path,
    tmp_path: Path,
    make_producer: MakeProducer,
) -> None:
    producer = make_producer(restartable_redis.url, breaker_cooldown=0.2)
    # A live pooled connection when Redis goes away, as in a running web app.
    assert enqueue_payment(**fields("before-outage"), producer=producer).status == "queued"
    restartable_redis.stop()
    down = [f"outage-{i}" for i in range(1000)]
    for transaction_id in down:
        assert enqueue_payment(**fields(transaction_id), producer=producer).status == "spooled"

    restartable_redis.restart()
    time.sleep(0.3)  # past the breaker's cooldown: the next checkout probes Redis
    assert enqueue_payment(**fields("first-after-outage"), producer=producer).status == "queued"

    # That success starts moving the spool into the queue in the background, in order.
    wait_until(lambda: not list(spool_dir.glob("spool-*")), 20, "the spool was not moved")
    client = client_for(restartable_redis.url)
    try:
        queued = assert_each_queued_once(client, {"before-outage", *down, "first-after-outage"})
    finally:
        close_client(client)
    assert [tx for tx in queued if tx.startswith("outage-")] == down

    env = ingest_environment(restartable_redis.url, tmp_path / "worker-spool")
    env.update(INGEST_API_URL=sandbox.url, INGEST_API_KEY=DEFAULT_WEBSITE_KEY)
    worker = run_ingest(env, "worker", "--burst", timeout=60)

    assert worker.returncode == 0, worker.stderr[-3000:]
    records = {record["transaction_id"] for record in sandbox.records()}
    assert records == {"before-outage", *down, "first-after-outage"}
    attempts = Counter(record["attempts"] for record in sandbox.records())
    assert attempts == {1: 1002}, "some payment was POSTed more than once"
