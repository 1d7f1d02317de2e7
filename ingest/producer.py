"""Enqueue payment events: validated in the caller's process, one Redis round trip each.

The event becomes an RQ job (so RQ's tooling sees it) whose id derives from the website,
transaction id and kind: enqueueing the same event twice leaves one job, and a retried
enqueue after a timeout cannot push it twice.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import keys
from .errors import QueueUnavailableError, ValidationError
from .models import Payment, payment_from_mapping, validate_payment
from .scripts import ENQUEUE
from .settings import Settings

DELIVER_FUNCTION = "ingest.delivery.deliver_payment"
ReceiptStatus = Literal["queued", "deferred", "duplicate", "spooled"]
_RESULTS: dict[int, ReceiptStatus] = {0: "duplicate", 1: "queued", 2: "deferred"}


@dataclass(frozen=True, slots=True)
class Receipt:
    """What happened to one enqueued event.

    ``status`` is ``queued``; ``deferred`` (a refund waiting for its payment to be delivered
    first); ``duplicate`` (the same event is already in the system or was delivered within
    the dedup window: nothing was added); or ``spooled`` (Redis was unreachable: kept on
    local disk, moved to the queue when Redis is back).
    """

    job_id: str
    transaction_id: str
    status: ReceiptStatus

    @property
    def duplicate(self) -> bool:
        return self.status == "duplicate"


@dataclass(frozen=True, slots=True)
class Rejected:
    """An event of a bulk enqueue that failed validation; nothing of it reached Redis."""

    index: int
    error: ValidationError

    status: Literal["invalid"] = "invalid"


def job_data(payment: Payment) -> str:
    """RQ's job ``data``: the call tuple a plain RQ worker could run, JSON-serialised."""
    return json.dumps(
        [DELIVER_FUNCTION, None, [payment.wire_body(), payment.website_id], {}],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def rq_timestamp(moment: datetime) -> str:
    # RQ's own format (rq.utils.utcformat), so RQ parses our job hashes.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def producer_connection(settings: Settings) -> redis.Redis:
    """A connection that fails fast: a hung Redis costs a checkout milliseconds, not seconds.

    No client-side retry: a retry after a timeout could be the second copy of a command that
    did reach Redis; our deterministic ids make a retry harmless, but not free in latency.
    """
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.producer_timeout,
        socket_connect_timeout=settings.producer_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


class Producer:
    """Validates and enqueues events. Thread-safe; safe across ``fork()`` (redis-py's pool
    notices the new pid and opens fresh connections in the child)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        connection: redis.Redis | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.connection = connection or producer_connection(self.settings)
        self.keys = keys.QueueKeys(self.settings.queue)
        self._enqueue_script = self.connection.register_script(ENQUEUE)

    def enqueue(self, payment: Payment) -> Receipt:
        """Put one validated event on the queue. One round trip (``EVALSHA``)."""
        keys_, args = self._script_call(payment)
        try:
            result = self._enqueue_script(keys=keys_, args=args)
        except redis.RedisError as exc:
            raise QueueUnavailableError(f"Redis unavailable: {type(exc).__name__}") from exc
        return Receipt(payment.job_id, payment.transaction_id, _RESULTS[int(result)])

    def enqueue_many(self, payments: Iterable[Payment]) -> list[Receipt]:
        """Enqueue many validated events in one round trip (a pipeline of script calls)."""
        batch = list(payments)
        if not batch:
            return []
        # Loads the script if needed, so the pipeline's EVALSHAs cannot meet NOSCRIPT.
        self._ensure_loaded()
        with self.connection.pipeline(transaction=False) as pipe:
            for payment in batch:
                keys_, args = self._script_call(payment)
                self._enqueue_script(keys=keys_, args=args, client=pipe)
            try:
                results = pipe.execute()
            except redis.RedisError as exc:
                raise QueueUnavailableError(f"Redis unavailable: {type(exc).__name__}") from exc
        return [
            Receipt(p.job_id, p.transaction_id, _RESULTS[int(r)])
            for p, r in zip(batch, results, strict=True)
        ]

    def _ensure_loaded(self) -> None:
        try:
            if not self.connection.script_exists(self._enqueue_script.sha)[0]:
                self._enqueue_script.sha = str(self.connection.script_load(ENQUEUE))
        except redis.RedisError as exc:
            raise QueueUnavailableError(f"Redis unavailable: {type(exc).__name__}") from exc

    def _script_call(self, payment: Payment) -> tuple[list[str], list[str | float]]:
        job_id = payment.job_id
        payment_id = payment.payment_job_id
        now = datetime.now(UTC)
        k = self.keys
        keys_ = [
            keys.job_key(job_id),
            k.queue,
            keys.RQ_QUEUES,
            k.stats,
            k.done(job_id),
            k.dead,
            keys.job_key(payment_id),
            keys.dependents_key(payment_id),
            k.deferred,
        ]
        kind = "refund" if payment.refunded else "payment"
        args: list[str | float] = [
            job_id,
            job_data(payment),
            rq_timestamp(now),
            self.settings.queue,
            payment.website_id or "",
            f"{kind} {payment.transaction_id}",
            "1" if payment.refunded else "0",
            now.timestamp(),
        ]
        return keys_, args

    def close(self) -> None:
        self.connection.close()


_default: Producer | None = None
_default_pid: int | None = None
_default_lock = threading.Lock()


def configure(settings: Settings | None = None, *, connection: redis.Redis | None = None) -> Producer:
    """Set the producer that :func:`enqueue_payment` uses (default: from the environment)."""
    global _default, _default_pid
    with _default_lock:
        _default = Producer(settings, connection=connection)
        _default_pid = os.getpid()
        return _default


def default_producer() -> Producer:
    producer = _default
    if producer is None:
        return configure()
    return producer


def enqueue_payment(
    *,
    amount: Any,
    currency: Any,
    transaction_id: Any,
    datafast_visitor_id: Any = None,
    email: Any = None,
    name: Any = None,
    customer_id: Any = None,
    renewal: Any = False,
    refunded: Any = False,
    is_free_trial: Any = None,
    timestamp: Any = None,
    website_id: Any = None,
    customer_email: Any = None,
    customer_name: Any = None,
    producer: Producer | None = None,
) -> Receipt:
    """Validate a payment (or refund) and queue it for delivery to DataFast.

    Raises :class:`ingest.ValidationError` (a ``ValueError``) naming every bad field before
    anything touches Redis, and :class:`ingest.QueueUnavailableError` if Redis cannot be
    reached. Enqueueing the same event again returns a receipt with ``duplicate=True``.
    """
    payment = validate_payment(
        amount=amount,
        currency=currency,
        transaction_id=transaction_id,
        datafast_visitor_id=datafast_visitor_id,
        email=email,
        name=name,
        customer_id=customer_id,
        renewal=renewal,
        refunded=refunded,
        is_free_trial=is_free_trial,
        timestamp=timestamp,
        website_id=website_id,
        customer_email=customer_email,
        customer_name=customer_name,
    )
    return (producer or default_producer()).enqueue(payment)


def enqueue_payments(
    events: Iterable[Mapping[str, Any]], *, producer: Producer | None = None
) -> list[Receipt | Rejected]:
    """Validate and enqueue many events (API field names) in one round trip.

    Returns one result per event, in order: a :class:`Receipt`, or :class:`Rejected` with
    the validation error for an event that was not queued. Invalid events do not stop the
    valid ones.
    """
    results: list[Receipt | Rejected | None] = []
    valid: list[tuple[int, Payment]] = []
    for index, event in enumerate(events):
        try:
            valid.append((index, payment_from_mapping(dict(event))))
            results.append(None)
        except ValidationError as exc:
            results.append(Rejected(index, exc))
    receipts = (producer or default_producer()).enqueue_many(p for _, p in valid)
    for (index, _), receipt in zip(valid, receipts, strict=True):
        results[index] = receipt
    return [r for r in results if r is not None]
