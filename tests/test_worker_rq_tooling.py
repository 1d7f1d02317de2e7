"""The worker stays an RQ worker: RQ's own controls act on it, and RQ's own tools (a plain
``rq worker``, run here as the real command) settle events in our keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import redis
from conftest import PROJECT_ROOT, worker_environment
from rq import Queue, Worker
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer
from rq.suspension import resume, suspend

from ingest.deadletter import DeadLetterStore
from ingest.models import validate_payment
from ingest.producer import Producer
from ingest.sandbox import DEFAULT_WEBSITE_ID, DEFAULT_WEBSITE_KEY, SandboxServer
from ingest.settings import Settings
from ingest.stats import read_accounting

StartWorker = Any  # the start_worker fixture (tests/conftest.py)
RQ = str(Path(sys.executable).with_name("rq"))


def _enqueue(redis_url: str, count: int, prefix: str = "rq-tool", **fields: Any) -> None:
    producer = Producer(Settings(redis_url=redis_url), spool=False)
    try:
        producer.enqueue_many(
            validate_payment(amount=1, currency="USD", transaction_id=f"{prefix}-{i}", **fields)
            for i in range(count)
        )
    finally:
        producer.close()


def run_rq(redis_url: str, sandbox: SandboxServer, *args: str) -> subprocess.CompletedProcess[str]:
    """RQ's own command line as an operator runs it, against our queue and the sandbox."""
    env = worker_environment(redis_url, sandbox.url, api_key=DEFAULT_WEBSITE_KEY)
    return subprocess.run(
        [RQ, *args[:-1], "--url", redis_url, args[-1]],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def rq_worker_burst(redis_url: str, sandbox: SandboxServer) -> subprocess.CompletedProcess[str]:
    result = run_rq(redis_url, sandbox, "worker", "--burst", "--serializer", "json", "payments")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


def rq_failed(redis_client: redis.Redis) -> int:
    queue = Queue("payments", connection=redis_client, serializer=JSONSerializer)
    return FailedJobRegistry(queue=queue).count


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


# -- a plain `rq worker` -------------------------------------------------------------------------


def test_plain_rq_worker_deliveries_are_counted_delivered(
    redis_url: str, redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    _enqueue(redis_url, 5)

    rq_worker_burst(redis_url, sandbox)

    accounting = read_accounting(redis_client, "payments")
    assert (accounting.delivered, accounting.in_system, accounting.lost) == (5, 0, 0)
    assert len(sandbox.records(website=DEFAULT_WEBSITE_ID)) == 5


def test_plain_rq_worker_puts_a_rejected_event_in_our_dead_letters_with_its_reason(
    redis_url: str, redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    _enqueue(redis_url, 1, prefix="refused")
    sandbox.set_faults(fail_ids={"refused-0": {"status": 422, "message": "bad total"}})

    rq_worker_burst(redis_url, sandbox)

    [letter] = DeadLetterStore(redis_client, "payments").iter()
    assert (letter.transaction_id, letter.reason, letter.status, letter.error) == (
        "refused-0",
        "rejected",
        422,
        "bad total",
    )
    assert rq_failed(redis_client) == 0
    assert read_accounting(redis_client, "payments").lost == 0


def test_plain_rq_worker_schedules_a_transient_failure_for_a_retry(
    redis_url: str, redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    _enqueue(redis_url, 1, prefix="unavailable")
    sandbox.set_faults(fail_ids={"unavailable-0": 503})

    rq_worker_burst(redis_url, sandbox)

    accounting = read_accounting(redis_client, "payments")
    assert (accounting.scheduled, accounting.lost) == (1, 0)
    assert rq_failed(redis_client) == 0


def test_plain_rq_worker_releases_a_deferred_refund_after_its_payment(
    redis_url: str, redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    _enqueue(redis_url, 1, prefix="order")
    _enqueue(redis_url, 1, prefix="order", refunded=True)
    assert read_accounting(redis_client, "payments").deferred == 1

    rq_worker_burst(redis_url, sandbox)

    records = sandbox.records(transaction_id="order-0")
    assert sorted(r["refunded"] for r in records) == [False, True]
    accounting = read_accounting(redis_client, "payments")
    assert (accounting.delivered, accounting.in_system, accounting.lost) == (2, 0, 0)


def test_event_a_plain_rq_worker_scheduled_for_a_retry_is_delivered_by_ours(
    redis_url: str, redis_client: redis.Redis, sandbox: SandboxServer, start_worker: StartWorker
) -> None:
    _enqueue(redis_url, 1, prefix="later")
    sandbox.set_faults(fail_ids={"later-0": 503})
    rq_worker_burst(redis_url, sandbox)  # RQ saves the job again: its data, compressed
    sandbox.set_faults(fail_ids={})

    assert start_worker(burst=True).wait(timeout=60) == 0

    accounting = read_accounting(redis_client, "payments")
    assert (accounting.delivered, accounting.in_system, accounting.lost) == (1, 0, 0)
    assert len(sandbox.records(transaction_id="later-0")) == 1
