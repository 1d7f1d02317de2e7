"""The asyncio twin, ``enqueue_payment_async`` / ``enqueue_payments_async``: the same
bounds, spool, idempotency, validation and fork behaviour as the sync producer.

Each test runs its own event loop (``asyncio.run``) and closes its producer in it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from ingest.embedded import RedisServer
from ingest.errors import SpoolFullError, ValidationError
from ingest.producer import (
    AsyncProducer,
    Receipt,
    Rejected,
    enqueue_payment_async,
    enqueue_payments_async,
)

from .conftest import (
    LATENCY_BOUND,
    HangingRedis,
    MakeAsyncProducer,
    assert_each_queued_once,
    client_for,
    close_client,
    fields,
    ingest_environment,
    metric,
    queued_transaction_ids,
    run_python,
    wait_until,
)

pytestmark = pytest.mark.integration


async def timed_enqueues(
    producer: AsyncProducer, prefix: str, count: int, pause: float = 0.0
) -> tuple[list[Receipt], float]:
    """Enqueue ``count`` events one after the other; the receipts and the slowest call."""
    receipts, slowest = [], 0.0
    for i in range(count):
        started = time.perf_counter()
        receipts.append(await enqueue_payment_async(**fields(f"{prefix}-{i}"), producer=producer))
        slowest = max(slowest, time.perf_counter() - started)
        if pause:
            await asyncio.sleep(pause)
    return receipts, slowest


def test_async_enqueue_returns_within_the_bound_and_spools_while_redis_is_stopped(
    restartable_redis: RedisServer, make_async_producer: MakeAsyncProducer
) -> None:
    restartable_redis.stop()

    async def run() -> tuple[list[Receipt], float, int]:
        producer = make_async_producer(restartable_redis.url)
        try:
            receipts, slowest = await timed_enqueues(producer, "async-down", 300)
            assert producer.spool is not None
            return receipts, slowest, producer.spool.pending()
        finally:
            await producer.aclose()

    receipts, slowest, pending = asyncio.run(run())

    assert {r.status for r in receipts} == {"spooled"}
    assert slowest < LATENCY_BOUND
    assert pending == 300


def test_async_enqueue_returns_within_the_bound_when_redis_accepts_but_never_answers(
    hanging_redis: HangingRedis, make_async_producer: MakeAsyncProducer
) -> None:
    async def run() -> tuple[list[Receipt], float]:
        producer = make_async_producer(hanging_redis.url, breaker_cooldown=0.2)
        try:
            return await timed_enqueues(producer, "async-hung", 40, pause=0.01)
        finally:
            await producer.aclose()

    receipts, slowest = asyncio.run(run())

    assert {r.status for r in receipts} == {"spooled"}
    assert slowest < LATENCY_BOUND


def test_async_open_breaker_keeps_most_enqueues_away_from_a_hung_redis(
    hanging_redis: HangingRedis, make_async_producer: MakeAsyncProducer
) -> None:
    async def run() -> float:
        producer = make_async_producer(hanging_redis.url, breaker_cooldown=1.0)
        started = time.monotonic()
        try:
            await timed_enqueues(producer, "async-breaker", 200)
        finally:
            await producer.aclose()
        return time.monotonic() - started

    elapsed = asyncio.run(run())

    assert hanging_redis.connections() <= 2 + elapsed / 1.0


def test_async_bulk_enqueue_returns_within_the_bound_when_redis_never_answers(
    hanging_redis: HangingRedis, make_async_producer: MakeAsyncProducer
) -> None:
    async def run() -> tuple[list[Receipt | Rejected], float]:
        # Without fsync: the subject is the wait on Redis, not 100 fdatasyncs on a busy disk.
        producer = make_async_producer(hanging_redis.url, spool_fsync=False)
        try:
            started = time.perf_counter()
            results = await enqueue_payments_async(
                [fields(f"async-hung-bulk-{i}") for i in range(100)], producer=producer
            )
            return results, time.perf_counter() - started
        finally:
            await producer.aclose()

    results, elapsed = asyncio.run(run())

    assert [r.status for r in results] == ["spooled"] * 100
    assert elapsed < LATENCY_BOUND


def test_async_spooled_events_are_queued_once_each_in_order_after_redis_restarts(
    restartable_redis: RedisServer, spool_dir: Path, make_async_producer: MakeAsyncProducer
) -> None:
    restartable_redis.stop()

    async def run() -> Receipt:
        # A generous timeout: the subject is the restart, and on a loaded machine the first
        # call after it may take longer than the 0.1 s default while the spool moves.
        producer = make_async_producer(
            restartable_redis.url, breaker_cooldown=0.2, producer_timeout=2.0
        )
        try:
            await timed_enqueues(producer, "async-back", 1000)
            restartable_redis.restart()
            await asyncio.sleep(0.3)  # past the breaker's cooldown
            return await enqueue_payment_async(**fields("async-trigger"), producer=producer)
        finally:
            await producer.aclose()

    assert asyncio.run(run()).status == "queued"

    wait_until(lambda: not list(spool_dir.glob("spool-*")), 20, "the spool was not moved")
    client = client_for(restartable_redis.url)
    try:
        queued = queued_transaction_ids(client)
    finally:
        close_client(client)
    # The spool moves by itself (the producer's watchdog) or on the first enqueue that reaches
    # Redis, whichever comes first: spooled events keep their order, each queued once.
    assert queued.count("async-trigger") == 1
    assert [t for t in queued if t != "async-trigger"] == [f"async-back-{i}" for i in range(1000)]


def test_eight_concurrent_tasks_sharing_a_producer_queue_each_event_exactly_once(
    redis_url: str, redis_client: redis.Redis, make_async_producer: MakeAsyncProducer
) -> None:
    shared = [f"async-shared-{i}" for i in range(50)]  # every task enqueues these too

    async def run() -> list[Receipt]:
        producer = make_async_producer(redis_url, producer_timeout=2.0)

        async def task(n: int) -> list[Receipt]:
            receipts = []
            for i in range(50):
                for tx in (f"async-{n}-{i}", shared[i]):
                    receipts.append(await enqueue_payment_async(**fields(tx), producer=producer))
            return receipts

        try:
            batches = await asyncio.gather(*(task(n) for n in range(8)))
        finally:
            await producer.aclose()
        return [receipt for batch in batches for receipt in batch]

    receipts = asyncio.run(run())

    assert Counter(r.status for r in receipts) == {"queued": 450, "duplicate": 350}
    expected = {f"async-{n}-{i}" for n in range(8) for i in range(50)} | set(shared)
    assert_each_queued_once(redis_client, expected)


def test_async_burst_larger_than_the_connection_pool_is_queued_not_spooled(
    redis_url: str, make_async_producer: MakeAsyncProducer
) -> None:
    # 300 checkouts in flight at once in one async server process; Redis is healthy.
    exhausted_before = metric(
        "ingest_producer_redis_errors_total", queue="payments", kind="MaxConnectionsError"
    )

    async def run() -> list[Receipt]:
        producer = make_async_producer(redis_url, producer_timeout=2.0)
        try:
            await enqueue_payment_async(**fields("async-warm-up"), producer=producer)
            calls = [
                enqueue_payment_async(**fields(f"async-burst-{i}"), producer=producer)
                for i in range(300)
            ]
            return await asyncio.gather(*calls)
        finally:
            await producer.aclose()

    statuses = Counter(r.status for r in asyncio.run(run()))

    exhausted = metric(
        "ingest_producer_redis_errors_total", queue="payments", kind="MaxConnectionsError"
    )
    assert statuses == {"queued": 300}, (
        f"{statuses}: a healthy Redis was treated as down when the client's connection "
        f"pool ran out ({exhausted - exhausted_before:g} MaxConnectionsError)"
    )


def test_async_enqueue_rejects_invalid_fields_like_the_sync_one_before_redis(
    redis_url: str, redis_client: redis.Redis, make_async_producer: MakeAsyncProducer
) -> None:
    rejected_before = metric("ingest_producer_rejected_total", field="currency")

    async def run() -> ValidationError:
        producer = make_async_producer(redis_url)
        try:
            with pytest.raises(ValidationError) as raised:
                await enqueue_payment_async(
                    amount="-1", currency="dollars", transaction_id="bad", producer=producer
                )
            return raised.value
        finally:
            await producer.aclose()

    error = asyncio.run(run())

    assert set(error.fields) == {"amount", "currency"}
    assert isinstance(error, ValueError)
    assert metric("ingest_producer_rejected_total", field="currency") == rejected_before + 1
    assert redis_client.dbsize() == 0


def test_async_enqueue_of_the_same_event_twice_reports_a_duplicate(
    redis_url: str, redis_client: redis.Redis, make_async_producer: MakeAsyncProducer
) -> None:
    async def run() -> list[Receipt]:
        producer = make_async_producer(redis_url, producer_timeout=2.0)
        try:
            return [
                await enqueue_payment_async(**fields("async-twice"), producer=producer)
                for _ in range(2)
            ]
        finally:
            await producer.aclose()

    first, second = asyncio.run(run())

    assert (first.status, second.status) == ("queued", "duplicate")
    assert second.duplicate
    assert second.job_id == first.job_id
    assert_each_queued_once(redis_client, {"async-twice"})


def test_async_bulk_enqueue_returns_one_result_per_event_in_order(
    redis_url: str, redis_client: redis.Redis, make_async_producer: MakeAsyncProducer
) -> None:
    events: list[dict[str, Any]] = [
        fields("async-bulk-0"),
        fields("async-bulk-1", currency="not a currency"),
        fields("async-bulk-0"),  # the same event again, in the same batch
        fields("async-bulk-3"),
    ]

    async def run() -> list[Receipt | Rejected]:
        producer = make_async_producer(redis_url, producer_timeout=2.0)
        try:
            return await enqueue_payments_async(events, producer=producer)
        finally:
            await producer.aclose()

    results = asyncio.run(run())

    assert [r.status for r in results] == ["queued", "invalid", "duplicate", "queued"]
    rejected = results[1]
    assert isinstance(rejected, Rejected)
    assert (rejected.index, rejected.error.fields) == (1, ["currency"])
    assert queued_transaction_ids(redis_client) == ["async-bulk-0", "async-bulk-3"]


def test_async_spool_at_its_cap_raises_to_the_caller(
    closed_redis_url: str, make_async_producer: MakeAsyncProducer
) -> None:
    async def run() -> tuple[int, BaseException | None]:
        producer = make_async_producer(closed_redis_url, spool_max_bytes=4096)
        try:
            for accepted in range(10_000):
                try:
                    await enqueue_payment_async(
                        **fields(f"async-cap-{accepted}"), producer=producer
                    )
                except SpoolFullError as exc:
                    return accepted, exc
            return accepted, None
        finally:
            await producer.aclose()

    accepted, refusal = asyncio.run(run())

    assert isinstance(refusal, SpoolFullError)
    assert accepted > 0


ASYNC_FORKING_PARENT = """
import asyncio, json, os, sys, traceback
from ingest.producer import AsyncProducer, enqueue_payment_async

children, connect_first, out = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
producer = AsyncProducer()

async def enqueue(name, count):
    return [
        (await enqueue_payment_async(amount="1", currency="USD", transaction_id=f"{name}-{i}",
                                     producer=producer)).status
        for i in range(count)
    ]

if connect_first:  # the master used the producer (opened a connection) before forking
    asyncio.run(enqueue("before-fork", 1))
pids = []
for n in range(children):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            statuses = asyncio.run(enqueue(f"child{n}", 50))
            with open(f"{out}/child-{n}.json", "w") as f:
                json.dump(statuses, f)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    pids.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
print(json.dumps(codes))
"""


@pytest.mark.parametrize(
    "connect_first",
    [False, True],
    ids=["producer-created-before-fork", "connection-opened-before-fork"],
)
def test_async_forked_children_queue_each_event_exactly_once(
    connect_first: bool,
    redis_url: str,
    redis_client: redis.Redis,
    spool_dir: Path,
    tmp_path: Path,
) -> None:
    env = ingest_environment(redis_url, spool_dir, producer_timeout="2.0")

    done = run_python(ASYNC_FORKING_PARENT, env, "3", str(int(connect_first)), str(tmp_path))

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [0, 0, 0], done.stderr[-3000:]
    for n in range(3):
        statuses = json.loads((tmp_path / f"child-{n}.json").read_text())
        assert set(statuses) == {"queued"}
    expected = {f"child{n}-{i}" for n in range(3) for i in range(50)}
    if connect_first:
        expected.add("before-fork-0")
    assert_each_queued_once(redis_client, expected)
