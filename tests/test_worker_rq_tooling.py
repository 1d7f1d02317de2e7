"""The worker stays an RQ worker: RQ's own controls act on it."""

from __future__ import annotations

from typing import Any

import redis
from rq import Queue, Worker
from rq.suspension import resume, suspend

from ingest.models import validate_payment
from ingest.producer import Producer
from ingest.settings import Settings
from ingest.stats import read_accounting

StartWorker = Any  # the start_worker fixture (tests/conftest.py)


def _enqueue(redis_url: str, count: int) -> None:
    producer = Producer(Settings(redis_url=redis_url), spool=False)
    try:
        producer.enqueue_many(
            validate_payment(amount=1, currency="USD", transaction_id=f"rq-tool-{i}")
            for i in range(count)
        )
    finally:
        producer.close()


def test_rq_suspend_holds_a_burst_worker_and_rq_resume_lets_it_drain(
    redis_url: str, redis_client: redis.Redis, start_worker: StartWorker
) -> None:
    _enqueue(redis_url, 50)
    suspend(redis_client)

    held = start_worker(burst=True)
    assert held.wait(timeout=30) == 0
    assert read_accounting(redis_client, "payments").queued == 50

    resume(redis_client)
    drained = start_worker(burst=True)
    assert drained.wait(timeout=30) == 0
    accounting = read_accounting(redis_client, "payments")
    assert (accounting.delivered, accounting.queued, accounting.lost) == (50, 0, 0)


def test_stats_count_only_workers_whose_heartbeat_has_not_expired(
    redis_client: redis.Redis,
) -> None:
    queue = Queue("payments", connection=redis_client)
    alive = Worker([queue], connection=redis_client, name="alive")
    dead = Worker([queue], connection=redis_client, name="killed")
    alive.register_birth()
    dead.register_birth()
    # A SIGKILLed worker never deregisters: RQ's workers set keeps its name, and only its
    # own key expires (worker_ttl after its last heartbeat).
    redis_client.delete(dead.key)

    assert read_accounting(redis_client, "payments").workers == 1
