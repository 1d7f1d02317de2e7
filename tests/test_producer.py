"""ingest.producer against a real redis-server: round trips, idempotency, refunds, RQ's view.

Integration lane: the session's redis-server (``redis_url`` is emptied for every test).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio
from conftest import run_on
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from ingest import keys
from ingest.delivery import Outcome, Verdict
from ingest.errors import ValidationError
from ingest.jobs import Claimed, job_data
from ingest.models import Payment, validate_payment
from ingest.producer import Producer, Receipt, Rejected, enqueue_payment, enqueue_payments
from ingest.retry import RetryPolicy
from ingest.scripts import ENQUEUE, Enqueue, EnqueueEvent, Retry, ack, claim
from ingest.settings import Settings
from ingest.worker import decide

pytestmark = pytest.mark.integration

QUEUE = keys.QueueKeys("payments")
T = TypeVar("T")
WEBSITE = "0123456789abcdef01234567"
NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)


class CountingConnection(redis.Connection):
    """A redis-py connection that records every packed write: one write, one round trip."""

    sent: list[Any] = []

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent.append(command)
        super().send_packed_command(command, check_health)


def _commands(sent: list[Any]) -> list[bytes]:
    """The command names in the recorded writes (a pipeline write holds several)."""
    names = []
    for packed in sent:
        chunks = packed if isinstance(packed, list) else [packed]
        data = b"".join(bytes(chunk) for chunk in chunks)
        names += re.findall(rb"\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n", data)
    return names


@pytest.fixture
def counting_client(redis_url: str) -> Iterator[redis.Redis]:
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    CountingConnection.sent = []
    try:
        yield client
    finally:
        client.close()
        pool.disconnect()


@pytest.fixture
def producer(redis_url: str, counting_client: redis.Redis) -> Iterator[Producer]:
    # No spool: these tests are about what reaches Redis, never about the disk fallback.
    producer = Producer(Settings(redis_url=redis_url), connection=counting_client, spool=False)
    yield producer
    producer.close()


def payment(transaction_id: str = "pi_1", **changes: Any) -> Payment:
    fields: dict[str, Any] = {"amount": "29.99", "currency": "USD"}
    fields.update(changes)
    return validate_payment(transaction_id=transaction_id, now=NOW, **fields)


def load_script(producer: Producer) -> None:
    """Enqueue a throwaway event so the script is cached server-side, then forget it."""
    producer.enqueue(payment("warm-up"))
    CountingConnection.sent.clear()


def command_calls(client: redis.Redis) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in client.info("commandstats").items()
    }


def queued_ids(client: redis.Redis) -> list[str]:
    return [raw.decode() for raw in client.lrange(QUEUE.queue, 0, -1)]


# -- what the worker does with an event, via its own scripts ---------------------------------------


def claim_all(redis_url: str, worker: str = "test-worker") -> list[Claimed]:
    now = time.time()
    return run_on(
        redis_url,
        lambda conn: claim(conn, QUEUE, now=now, lease_until=now + 30, worker=worker, limit=100),
    )


def acknowledge(
    redis_url: str, claimed: Claimed, outcome: Outcome, worker: str = "test-worker"
) -> None:
    now = time.time()
    policy = RetryPolicy(max_attempts=1, base=1.0, cap=1.0)
    entry = decide(claimed, outcome, now=now, policy=policy, random=lambda: 0.5)
    stale = run_on(
        redis_url,
        lambda conn: ack(conn, QUEUE, [entry], now=now, worker=worker, dedup_window=3600),
    )
    assert stale == 0


DELIVERED = Outcome(Verdict.DELIVERED, 200, "Payment recorded")
REJECTED = Outcome(Verdict.PERMANENT, 400, "invalid payment: amount")


# -- one round trip --------------------------------------------------------------------------------


def test_enqueue_is_one_round_trip_once_the_script_is_loaded(producer: Producer) -> None:
    load_script(producer)
    producer.enqueue(payment("pi_one_trip"))
    assert len(CountingConnection.sent) == 1
    assert _commands(CountingConnection.sent) == [b"EVALSHA"]


def test_enqueue_adds_exactly_one_evalsha_on_the_server(
    producer: Producer, redis_client: redis.Redis
) -> None:
    load_script(producer)
    before = command_calls(redis_client)
    producer.enqueue(payment("pi_server_side"))
    after = command_calls(redis_client)
    added = {name: after[name] - before.get(name, 0) for name in after}
    added = {name: n for name, n in added.items() if n and name != "info"}  # our own INFO
    # commandstats also counts the commands the script runs inside EVALSHA; those are not
    # round trips. Any other command would be a second top-level call.
    inside_script = {name.lower() for name in re.findall(r"redis\.call\('(\w+)'", ENQUEUE)}
    assert added.pop("evalsha") == 1
    assert set(added) <= inside_script


def test_enqueue_sends_no_top_level_command_but_evalsha(
    producer: Producer, redis_client: redis.Redis, counting_client: redis.Redis
) -> None:
    load_script(producer)
    marker = "end-of-enqueue-marker"
    with redis_client.monitor() as monitor:
        producer.enqueue(payment("pi_monitored"))
        counting_client.echo(marker)
        seen = []
        while True:
            command = monitor.next_command()
            if marker in command["command"]:
                break
            seen.append(command)
    top_level = [c["command"].split()[0] for c in seen if c["client_type"] != "lua"]
    assert top_level == ["EVALSHA"]


def test_prepacked_enqueue_is_byte_for_byte_what_redis_py_would_send() -> None:
    enqueue = Enqueue(keys.QueueKeys("payments"))
    event = payment("pi_packed", name='Zoë "Q"')
    call = enqueue.arguments(
        EnqueueEvent(
            job_id=event.job_id,
            data=job_data(event),
            website="-",
            description="payment pi_packed",
            refund=False,
            payment_job_id=event.job_id,
            now=datetime(2027, 1, 15, tzinfo=UTC),
        )
    )
    ks, args = call
    expected = redis.Connection().pack_command("EVALSHA", Enqueue.script.sha, len(ks), *ks, *args)
    assert enqueue.packed(call) == b"".join(expected)


@pytest.mark.parametrize("queue", ["payments", "pay%ments"])
@pytest.mark.parametrize("refund", [False, True])
def test_enqueue_packed_in_one_step_is_byte_for_byte_the_packed_arguments(
    refund: bool, queue: str
) -> None:
    enqueue = Enqueue(keys.QueueKeys(queue))
    event = payment("pi_packed", name='Zoë "Q"', website_id=WEBSITE, refunded=refund)
    fields = EnqueueEvent(
        job_id=event.job_id,
        data=job_data(event),
        website=WEBSITE,
        description="refund pi_packed" if refund else "payment pi_packed",
        refund=refund,
        payment_job_id=event.payment_job_id,
        now=datetime(2027, 1, 15, 8, 30, 1, 250000, tzinfo=UTC),
    )
    assert enqueue.packed_event(fields) == enqueue.packed(enqueue.arguments(fields))


def test_enqueue_on_a_single_connection_client_queues_once_and_reports_the_duplicate(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # No pool to borrow from: the call goes through redis-py's EVALSHA, not the pre-packed path.
    client = redis.Redis.from_url(redis_url, single_connection_client=True)
    producer = Producer(Settings(redis_url=redis_url), connection=client, spool=False)
    try:
        redis_client.script_flush()
        assert producer.enqueue(payment("pi_single")).status == "queued"
        assert producer.enqueue(payment("pi_single")).status == "duplicate"
    finally:
        producer.close()
    assert queued_ids(redis_client) == [payment("pi_single").job_id]


def test_enqueue_loads_the_script_when_redis_has_forgotten_it(
    producer: Producer, redis_client: redis.Redis
) -> None:
    load_script(producer)
    redis_client.script_flush()
    assert producer.enqueue(payment("pi_after_flush")).status == "queued"
    assert queued_ids(redis_client)[-1] == payment("pi_after_flush").job_id


def test_enqueue_many_loads_the_script_when_redis_has_forgotten_it(
    producer: Producer, redis_client: redis.Redis
) -> None:
    load_script(producer)
    redis_client.script_flush()
    receipts = producer.enqueue_many([payment("pi_flushed_1"), payment("pi_flushed_2")])
    assert [r.status for r in receipts] == ["queued", "queued"]
    assert redis_client.llen(QUEUE.queue) == 3  # with the warm-up event


def test_enqueue_many_is_one_round_trip_once_the_script_is_loaded(producer: Producer) -> None:
    load_script(producer)
    producer.enqueue_many(payment(f"pi_batch_{i}") for i in range(50))
    assert _commands(CountingConnection.sent) == [b"EVALSHA"] * 50
    assert len(CountingConnection.sent) == 1


# -- what an enqueue leaves in Redis ---------------------------------------------------------------


def test_enqueued_event_is_an_rq_job_on_the_queue(
    producer: Producer, redis_client: redis.Redis
) -> None:
    event = payment("pi_queued")
    receipt = producer.enqueue(event)
    assert receipt == Receipt(event.job_id, "pi_queued", "queued")
    assert queued_ids(redis_client) == [event.job_id]
    assert redis_client.hget(keys.job_key(event.job_id), "status") == b"queued"


def test_enqueuing_the_same_event_twice_leaves_one_job_and_reports_a_duplicate(
    producer: Producer, redis_client: redis.Redis
) -> None:
    first = producer.enqueue(payment("pi_twice"))
    second = producer.enqueue(payment("pi_twice", amount=30))
    assert (first.status, first.duplicate) == ("queued", False)
    assert (second.status, second.duplicate) == ("duplicate", True)
    assert second.job_id == first.job_id
    assert queued_ids(redis_client) == [first.job_id]
    assert redis_client.keys(keys.JOB_PREFIX + "*") == [keys.job_key(first.job_id).encode()]


def test_a_payment_and_its_refund_are_two_jobs(
    producer: Producer, redis_client: redis.Redis
) -> None:
    paid = producer.enqueue(payment("pi_refunded"))
    refund = producer.enqueue(payment("pi_refunded", refunded=True))
    assert refund.job_id != paid.job_id
    assert not refund.duplicate
    assert redis_client.exists(keys.job_key(paid.job_id), keys.job_key(refund.job_id)) == 2


def test_refund_enqueued_while_its_payment_is_queued_is_deferred(
    producer: Producer, redis_client: redis.Redis
) -> None:
    paid = producer.enqueue(payment("pi_waiting"))
    refund = producer.enqueue(payment("pi_waiting", refunded=True))
    assert refund.status == "deferred"
    assert queued_ids(redis_client) == [paid.job_id]
    assert redis_client.zscore(QUEUE.deferred, refund.job_id) is not None
    assert redis_client.hget(keys.job_key(refund.job_id), "status") == b"deferred"


def test_deferred_refund_is_queued_when_its_payment_is_delivered(
    producer: Producer,
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    producer.enqueue(payment("pi_then_refund"))
    refund = producer.enqueue(payment("pi_then_refund", refunded=True))
    [claimed] = claim_all(redis_url)
    acknowledge(redis_url, claimed, DELIVERED)
    assert queued_ids(redis_client) == [refund.job_id]
    assert redis_client.zcard(QUEUE.deferred) == 0
    assert redis_client.hget(keys.job_key(refund.job_id), "status") == b"queued"


def test_refund_enqueued_while_its_payment_is_in_flight_is_queued_when_it_is_delivered(
    producer: Producer,
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    producer.enqueue(payment("pi_in_flight"))
    [claimed] = claim_all(redis_url)  # a worker is sending the payment right now
    refund = producer.enqueue(payment("pi_in_flight", refunded=True))
    assert refund.status == "deferred"
    acknowledge(redis_url, claimed, DELIVERED)
    assert queued_ids(redis_client) == [refund.job_id]
    assert redis_client.zcard(QUEUE.deferred) == 0


def test_refund_of_a_delivered_payment_is_queued_at_once(
    producer: Producer,
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    producer.enqueue(payment("pi_done"))
    [claimed] = claim_all(redis_url)
    acknowledge(redis_url, claimed, DELIVERED)
    refund = producer.enqueue(payment("pi_done", refunded=True))
    assert refund.status == "queued"
    assert queued_ids(redis_client) == [refund.job_id]


def test_event_enqueued_again_after_delivery_is_a_duplicate(
    producer: Producer,
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    producer.enqueue(payment("pi_delivered"))
    [claimed] = claim_all(redis_url)
    acknowledge(redis_url, claimed, DELIVERED)
    assert producer.enqueue(payment("pi_delivered")).duplicate
    assert redis_client.llen(QUEUE.queue) == 0


def test_claim_reads_several_events_at_once_each_into_its_own_row(
    producer: Producer, redis_url: str
) -> None:
    retried = producer.enqueue(payment("pi_retried"))
    [first_try] = claim_all(redis_url)
    history = [{"at": "2026-05-01T12:00:00.000Z", "status": 503, "error": "unavailable"}]
    stale = run_on(
        redis_url,
        lambda conn: ack(
            conn,
            QUEUE,
            [Retry(first_try.job_id, due=time.time() - 1, attempts=1, history=history)],
            now=time.time(),
            worker="test-worker",
            dedup_window=3600,
        ),
    )
    assert stale == 0
    plain = producer.enqueue(payment("pi_plain"))
    site = producer.enqueue(payment("pi_site", website_id=WEBSITE))

    claimed = claim_all(redis_url)

    # Queued first, then the retry that had come due (CLAIM appends those to the queue).
    assert [(c.job_id, c.transaction_id) for c in claimed] == [
        (plain.job_id, "pi_plain"),
        (site.job_id, "pi_site"),
        (retried.job_id, "pi_retried"),
    ]
    assert [(c.website, c.website_id) for c in claimed] == [
        (keys.DEFAULT_SITE, None),
        (WEBSITE, WEBSITE),
        (keys.DEFAULT_SITE, None),
    ]
    assert [(c.attempts, c.history) for c in claimed] == [(0, []), (0, []), (1, history)]


def test_invalid_event_never_reaches_redis(producer: Producer, redis_client: redis.Redis) -> None:
    with pytest.raises(ValidationError) as caught:
        enqueue_payment(amount=-5, currency="USD", transaction_id="pi_bad", producer=producer)
    assert caught.value.fields == ["amount"]
    assert CountingConnection.sent == []
    assert redis_client.dbsize() == 0


# -- many at once ----------------------------------------------------------------------------------


def test_enqueue_many_returns_one_receipt_per_event_in_order(
    producer: Producer, redis_client: redis.Redis
) -> None:
    producer.enqueue(payment("pi_b"))
    events = [payment("pi_a"), payment("pi_b"), payment("pi_c"), payment("pi_a", refunded=True)]
    receipts = producer.enqueue_many(events)
    assert [(r.transaction_id, r.status) for r in receipts] == [
        ("pi_a", "queued"),
        ("pi_b", "duplicate"),
        ("pi_c", "queued"),
        ("pi_a", "deferred"),
    ]
    assert [r.job_id for r in receipts] == [e.job_id for e in events]
    assert redis_client.llen(QUEUE.queue) == 3


def test_enqueue_payments_reports_invalid_rows_with_their_index_and_field(
    producer: Producer,
) -> None:
    rows = [
        {"amount": 10, "currency": "USD", "transaction_id": "pi_row_0"},
        {"amount": -1, "currency": "USD", "transaction_id": "pi_row_1"},
        {"amount": 10, "currency": "USD", "transaction_id": "pi_row_2"},
        {"ammount": 10, "currency": "USD", "transaction_id": "pi_row_3"},
    ]
    results = enqueue_payments(rows, producer=producer)
    rejected = [r for r in results if isinstance(r, Rejected)]
    assert [(r.index, r.status, r.error.fields) for r in rejected] == [
        (1, "invalid", ["amount"]),
        # Every bad field of a row at once: the unknown one, and the required one it misspells.
        (3, "invalid", ["amount", "ammount"]),
    ]


def test_enqueue_payments_enqueues_the_valid_rows_despite_invalid_ones(
    producer: Producer, redis_client: redis.Redis
) -> None:
    rows = [
        {"amount": 10, "currency": "USD", "transaction_id": "pi_row_0"},
        {"amount": 10, "currency": "DOLLARS", "transaction_id": "pi_row_1"},
        {"amount": "0", "currency": "eur", "transaction_id": "pi_row_2"},
    ]
    results = enqueue_payments(rows, producer=producer)
    assert len(results) == 3
    assert isinstance(results[0], Receipt)
    assert isinstance(results[1], Rejected)
    assert isinstance(results[2], Receipt)
    assert [r.transaction_id for r in (results[0], results[2])] == ["pi_row_0", "pi_row_2"]
    assert queued_ids(redis_client) == [results[0].job_id, results[2].job_id]


# -- RQ sees our jobs and queue --------------------------------------------------------------------


def test_job_is_readable_by_rq(producer: Producer, redis_client: redis.Redis) -> None:
    event = payment("pi_rq", datafast_visitor_id="visitor-1")
    producer.enqueue(event)
    job = Job.fetch(event.job_id, connection=redis_client, serializer=JSONSerializer)
    assert job.func_name == "ingest.delivery.deliver_payment"
    assert job.args == [event.wire_body(), None]
    assert job.origin == "payments"
    assert job.get_status() == JobStatus.QUEUED
    assert job.enqueued_at is not None


def test_queue_is_listed_by_rq(producer: Producer, redis_client: redis.Redis) -> None:
    producer.enqueue(payment("pi_listed"))
    queues = Queue.all(connection=redis_client, serializer=JSONSerializer)
    assert [q.name for q in queues] == ["payments"]
    assert queues[0].count == 1
    assert queues[0].job_ids == [payment("pi_listed").job_id]
