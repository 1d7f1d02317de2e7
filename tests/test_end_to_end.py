"""The whole pipeline: enqueue 2,000 payments, two real worker processes, the real sandbox.

Integration lane. The drain runs once per module (``drained``) and is recorded; each test
then checks one promise against that record: every payment recorded once by the API,
nothing left in Redis, nothing lost.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import WorkerProcess, spawn_worker
from rq import Worker

from ingest import keys
from ingest.embedded import RedisServer
from ingest.models import Payment, validate_payment
from ingest.producer import Producer
from ingest.sandbox import RecordView, SandboxProcess, StatsView
from ingest.settings import Settings
from ingest.stats import Accounting, read_accounting

pytestmark = pytest.mark.integration

EVENTS = 2000
WORKERS = 2
DRAIN_TIMEOUT = 60.0
QUEUE = keys.QueueKeys("payments")


def sample_events(count: int) -> list[Payment]:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    amounts = ["9.99", "19", "29.99", "0", "249.5", "1000.01"]
    return [
        validate_payment(
            amount=Decimal(amounts[i % len(amounts)]),
            currency=("usd", "EUR", "gbp")[i % 3],
            transaction_id=f"e2e_{i:05d}",
            datafast_visitor_id=f"3f1c2a4e-{i:04x}-4c1b-9b7e-000000000000",
            email=f"buyer{i}@example.com" if i % 4 == 0 else None,
            customer_id=f"cus_{i}",
            renewal=i % 7 == 0,
            timestamp=start + timedelta(seconds=i),
        )
        for i in range(count)
    ]


@dataclass(frozen=True)
class Drained:
    """What a run left behind, recorded once it finished."""

    events: list[Payment]
    enqueue_statuses: Counter[str]
    exit_codes: list[int]
    worker_output: str
    seconds: float
    records: list[RecordView]
    sandbox_stats: StatsView
    queued: int
    started: int
    scheduled: int
    job_keys: list[bytes]
    accounting: Accounting


@pytest.fixture(scope="module")
def drained(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Drained]:
    url = redis_server.url
    client = redis.Redis.from_url(url)
    client.flushall()
    log_dir = tmp_path_factory.mktemp("e2e-workers")
    events = sample_events(EVENTS)
    producer = Producer(Settings(redis_url=url), connection=client, spool=False)
    # The sandbox in its own process, as the real API is: sharing this process's GIL would
    # make it, not the workers, the bottleneck of the run.
    with SandboxProcess() as sandbox:
        receipts = producer.enqueue_many(events)
        started_at = time.monotonic()
        workers = [spawn_worker(url, sandbox.url, log_dir, burst=True) for _ in range(WORKERS)]
        try:
            exit_codes = [worker.wait(DRAIN_TIMEOUT) for worker in workers]
        finally:
            for worker in workers:
                worker.stop()
        seconds = time.monotonic() - started_at
        records = sandbox.records()
        sandbox_stats = sandbox.stats()
    try:
        yield Drained(
            events=events,
            enqueue_statuses=Counter(r.status for r in receipts),
            exit_codes=exit_codes,
            worker_output="\n".join(f"--- {w.name}\n{w.output()}" for w in workers),
            seconds=seconds,
            records=records,
            sandbox_stats=sandbox_stats,
            queued=int(client.llen(QUEUE.queue)),
            started=int(client.zcard(QUEUE.started)),
            scheduled=int(client.zcard(QUEUE.scheduled)),
            job_keys=[k for k in client.keys(keys.JOB_PREFIX + "*")],
            accounting=read_accounting(client, QUEUE.name),
        )
    finally:
        client.close()
        client.connection_pool.disconnect()


def test_every_event_is_enqueued(drained: Drained) -> None:
    assert drained.enqueue_statuses == Counter({"queued": EVENTS})


def test_both_burst_workers_finish_cleanly(drained: Drained) -> None:
    assert drained.exit_codes == [0] * WORKERS, drained.worker_output


def test_api_records_every_transaction_id_exactly_once(drained: Drained) -> None:
    recorded = Counter(r["transaction_id"] for r in drained.records)
    assert set(recorded) == {e.transaction_id for e in drained.events}
    assert set(recorded.values()) == {1}
    assert {r["status"] for r in drained.records} == {"recorded"}
    assert drained.sandbox_stats["recorded"] == EVENTS


def test_api_receives_each_event_body_exactly_as_validated(drained: Drained) -> None:
    bodies = {r["transaction_id"]: r["body"] for r in drained.records}
    for event in drained.events:
        assert bodies[event.transaction_id] == json.loads(event.wire_body())


def test_resends_reach_the_api_only_as_duplicates(drained: Drained) -> None:
    resent = sum(r["attempts"] - 1 for r in drained.records)
    assert drained.sandbox_stats["duplicates"] == resent
    assert drained.sandbox_stats["by_status"] == {"200": EVENTS + resent}


def test_redis_holds_no_queued_started_or_scheduled_job(drained: Drained) -> None:
    assert (drained.queued, drained.started, drained.scheduled) == (0, 0, 0)


def test_redis_holds_no_job_hash(drained: Drained) -> None:
    assert drained.job_keys == []


def test_accounting_shows_every_event_delivered_and_none_lost(drained: Drained) -> None:
    a = drained.accounting
    print(
        f"\nend to end: enqueued={a.enqueued} delivered={a.delivered} "
        f"duplicates={a.api_duplicates} (refused at enqueue: {a.duplicates}) dead={a.dead} "
        f"lost={a.lost} in {drained.seconds:.1f} s with {WORKERS} workers "
        f"({a.delivered / drained.seconds:,.0f} events/s)"
    )
    assert a.enqueued == EVENTS
    assert a.delivered == EVENTS
    assert a.dead == 0
    assert a.in_system == 0
    assert a.lost == 0


# -- RQ's own tooling sees our queue and workers ---------------------------------------------------


def rq_info(url: str) -> str:
    rq = Path(sys.executable).with_name("rq")
    command = [str(rq)] if rq.exists() else [shutil.which("rq") or "rq"]
    result = subprocess.run(
        [*command, "info", "--url", url], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_for_worker(client: redis.Redis, worker: WorkerProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.name in {w.name for w in Worker.all(connection=client)}:
            return
        if worker.process.poll() is not None:
            pytest.fail(f"worker exited with {worker.process.returncode}:\n{worker.output()}")
        time.sleep(0.05)
    pytest.fail(f"worker {worker.name} did not register in {timeout} s:\n{worker.output()}")


def test_rq_info_lists_our_queue(redis_url: str) -> None:
    producer = Producer(Settings(redis_url=redis_url), spool=False)
    try:
        producer.enqueue(validate_payment(amount=5, currency="USD", transaction_id="pi_info"))
    finally:
        producer.close()
    output = rq_info(redis_url)
    assert "payments" in output
    assert "1 queues" in output


def test_rq_info_lists_a_running_worker(
    redis_url: str, redis_client: redis.Redis, start_worker: Any
) -> None:
    worker = start_worker(burst=False, name=f"e2e-info-{time.time_ns()}")
    wait_for_worker(redis_client, worker)
    output = rq_info(redis_url)
    assert worker.name in output
    assert "1 workers" in output
    assert worker.stop() == 0, worker.output()
