"""Enqueue payment events: validated in the caller's process, one Redis round trip each.

The event becomes an RQ job (so RQ's tooling sees it) whose id derives from the website,
transaction id and kind: enqueueing the same event twice leaves one job, and a retried
enqueue after a timeout cannot push it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from . import keys, metrics
from .connection import connect, connect_async, redis_unavailable
from .errors import QueueUnavailableError, SpoolFullError, ValidationError
from .jobs import job_data, job_description
from .logs import get_logger
from .models import Payment, payment_from_mapping, validate_payment
from .scripts import ENQUEUE, Enqueue, EnqueueEvent
from .settings import Settings
from .spool import FlushResult, Spool

_log = get_logger(component="producer")

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


# redis-py opens every connection with CLIENT SETINFO (library name and version): one more
# round trip inside the producer's few-millisecond budget. A burst of first calls in a fresh
# process (an async app's first requests, each opening a pooled connection) then overran the
# timeout and spooled about a third of its events on a healthy Redis. redis-py 8 turns it off
# with driver_info=None (lib_name is deprecated there); redis-py 7 with lib_name=None.
NO_HANDSHAKE: dict[str, Any] = (
    {"driver_info": None}
    if importlib.util.find_spec("redis.driver_info")
    else {"lib_name": None, "lib_version": None}
)


def producer_connection(settings: Settings) -> redis.Redis:
    """A connection that fails fast: a hung Redis costs a checkout milliseconds, not seconds.

    No client-side retry: the spool is the fallback, and a retry after a timeout would only
    add latency (deterministic ids make a repeated enqueue harmless, not free).
    """
    return connect(
        settings.redis_url,
        pool_size=PRODUCER_POOL_SIZE,
        socket_timeout=settings.producer_timeout,
        socket_connect_timeout=settings.producer_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        **NO_HANDSHAKE,
    )


class CircuitBreaker:
    """After a Redis failure, skip Redis for ``cooldown`` seconds, then let one call probe.

    While Redis is down every checkout would otherwise pay the full timeout; with the
    breaker open they go straight to the spool (~0.1 ms).
    """

    def __init__(self, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown = cooldown
        self._clock = clock
        self._open_until = 0.0
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._clock() < self._open_until

    def allow(self) -> bool:
        if self._open_until == 0.0:
            return True  # closed: the common case needs no lock (a stale read is harmless)
        with self._lock:
            now = self._clock()
            if now < self._open_until:
                return False
            if self._open_until:
                # Half-open: this caller probes; the others keep spooling until it answers.
                self._open_until = now + self.cooldown
            return True

    def success(self) -> bool:
        """Record a success; True if this closed a breaker that was open."""
        if self._open_until == 0.0:
            return False
        with self._lock:
            was_open = self._open_until != 0.0
            self._open_until = 0.0
            return was_open

    def failure(self) -> None:
        with self._lock:
            self._open_until = self._clock() + self.cooldown


PRODUCER_POOL_SIZE = 100


def _raise_errors(results: list[Any]) -> None:
    for result in results:
        if isinstance(result, Exception):
            raise result


class _ProducerBase:
    """What the sync and async producers share: keys, script arguments, breaker, spool."""

    def __init__(self, settings: Settings | None, *, spool: Spool | bool | None) -> None:
        self.settings = settings or Settings()
        self.keys = keys.QueueKeys(self.settings.queue)
        # Resolved once: a labels() lookup on every enqueue costs more than the increment.
        self._enqueued_by_status = {
            status: metrics.ENQUEUED.labels(self.settings.queue, status)
            for status in (*_RESULTS.values(), "spooled")
        }
        self.breaker = CircuitBreaker(self.settings.breaker_cooldown)
        if spool is True:
            spool = Spool(
                self.settings.spool_dir,
                max_bytes=self.settings.spool_max_bytes,
                fsync=self.settings.spool_fsync,
            )
        self.spool: Spool | None = spool or None
        self._flusher: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._flusher_lock = threading.Lock()
        # Set by close(): the watchdog stops probing. Left running, it flushed a closed
        # producer's spool into whatever server later took the same address.
        self._closed = threading.Event()
        self._spool_dirty = self.spool is not None and self.spool.pending() > 0
        self._enqueue = Enqueue(self.keys)

    @staticmethod
    def _event(payment: Payment, job_id: str) -> EnqueueEvent:
        """What the ``ENQUEUE`` script is given for one event (:class:`Enqueue`)."""
        return EnqueueEvent(
            job_id=job_id,
            data=job_data(payment),
            website=payment.website_id or keys.DEFAULT_SITE,
            description=job_description(payment),
            refund=payment.refunded,
            # A payment's own id (a hash) unless it is a refund: computed once per enqueue.
            payment_job_id=payment.payment_job_id if payment.refunded else job_id,
            now=datetime.now(UTC),
        )

    def _script_call(self, payment: Payment, job_id: str) -> tuple[list[bytes], list[bytes]]:
        return self._enqueue.arguments(self._event(payment, job_id))

    def _packed_call(self, payment: Payment, job_id: str) -> bytes:
        """:meth:`_script_call`, packed for the socket (:meth:`Enqueue.packed_event`)."""
        return self._enqueue.packed_event(self._event(payment, job_id))

    def _receipt(self, payment: Payment, result: Any, job_id: str | None = None) -> Receipt:
        status = _RESULTS[int(result)]
        self._enqueued_by_status[status].inc()
        return Receipt(job_id or payment.job_id, payment.transaction_id, status)

    def _spooled(self, payments: list[Payment], exc: BaseException | None) -> list[Receipt]:
        """Redis failed (``exc``) or the open breaker kept us from it (``None``): keep the
        events on disk, or raise if there is no room."""
        if exc is not None:
            # Only a real failure (re)opens the breaker: calls it kept away must not push the
            # next probe further out, or steady traffic would keep it open forever.
            self.breaker.failure()
            metrics.REDIS_ERRORS.labels(self.settings.queue, type(exc).__name__).inc()
        if self.spool is None:
            reason = type(exc).__name__ if exc is not None else "circuit open"
            raise QueueUnavailableError(f"Redis unavailable: {reason}") from exc
        try:
            self.spool.append_many(payments)
        except SpoolFullError:
            metrics.SPOOL_FULL.inc(len(payments))
            raise
        self._enqueued_by_status["spooled"].inc(len(payments))
        metrics.SPOOL_EVENTS.inc(len(payments))
        self._spool_dirty = True
        self._watch_for_redis()
        return [Receipt(p.job_id, p.transaction_id, "spooled") for p in payments]

    def _watch_for_redis(self) -> None:
        """Ping Redis every cooldown on a daemon thread and flush the spool once it answers,
        so spooled events move even if no checkout comes along to notice Redis is back."""
        with self._flusher_lock:
            if self._watchdog is not None and self._watchdog.is_alive():
                return
            self._watchdog = threading.Thread(
                target=self._wait_for_redis, name="ingest-redis-watchdog", daemon=True
            )
            self._watchdog.start()

    def _wait_for_redis(self) -> None:
        while self._spool_dirty and not self._closed.wait(self.settings.breaker_cooldown):
            probe = connect(self.settings.redis_url, socket_timeout=1, socket_connect_timeout=1)
            try:
                probe.ping()
            except redis.RedisError:
                continue
            finally:
                probe.close()
            self.breaker.success()
            self.start_background_flush()
            return

    def _after_success(self) -> None:
        if self.breaker.success() or self._spool_dirty:
            self.start_background_flush()

    def _spool_only(self, payments: list[Payment]) -> list[Receipt]:
        return self._spooled(payments, None)

    def _behind_spool(self, payments: list[Payment]) -> bool:
        """Whether a refund here must follow events still on disk instead of going to Redis.

        A payment spooled by any process sharing this spool directory is not in Redis yet,
        so a refund sent now could not wait for it; spooled too, it is flushed after every
        spooled payment (see :meth:`Spool.flush`). Costs a directory listing, refunds only.
        """
        return (
            self.spool is not None
            and any(p.refunded for p in payments)
            and self.spool.holds_events()
        )

    def start_background_flush(self) -> None:
        """Move spooled events into Redis on a daemon thread (one at a time per producer)."""
        if self.spool is None:
            return
        with self._flusher_lock:
            if self._flusher is not None and self._flusher.is_alive():
                return
            self._spool_dirty = False
            self._flusher = threading.Thread(
                target=self._flush_in_background, name="ingest-spool-flush", daemon=True
            )
            self._flusher.start()

    def _flush_in_background(self) -> None:
        try:
            result = self.flush_spool()
        except Exception as exc:  # Redis went away again: the next success retries
            self._spool_dirty = True
            _log.warning("spool flush interrupted; will retry", error=type(exc).__name__)
            return
        if result.events or result.quarantined:
            _log.info(
                "spool flushed",
                events=result.events,
                queued=result.queued,
                duplicates=result.duplicates,
                quarantined=result.quarantined,
            )

    def flush_spool(self) -> FlushResult:
        """Move every spooled event into Redis now (what ``ingest spool flush`` runs)."""
        if self.spool is None:
            return FlushResult()
        connection = connect(self.settings.redis_url, socket_timeout=10)
        try:
            flusher = Producer(self.settings, connection=connection, spool=False)
            result = self.spool.flush(flusher.enqueue_many)
        finally:
            connection.close()
        if result.held_back:
            self._spool_dirty = True  # the next successful enqueue flushes again
        metrics.SPOOL_EVENTS.set(self.spool.pending())
        return result


class Producer(_ProducerBase):
    """Validates and enqueues events. Thread-safe, and safe across ``fork()``: redis-py's
    pool notices the new pid and opens fresh connections in the child, and the spool opens
    a file of the child's own.

    ``spool=True`` (default) keeps events on local disk while Redis is unreachable;
    ``spool=False`` raises :class:`QueueUnavailableError` instead.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        connection: redis.Redis | None = None,
        spool: Spool | bool = True,
    ) -> None:
        super().__init__(settings, spool=spool)
        self.connection = connection or producer_connection(self.settings)
        self._queue_listed = False

    def enqueue(self, payment: Payment) -> Receipt:
        """Put one validated event on the queue: one round trip (``EVALSHA``), or the spool."""
        if not self.breaker.allow() or self._behind_spool([payment]):
            return self._spool_only([payment])[0]
        job_id = payment.job_id
        connection = self.connection
        try:
            if connection.connection is None:  # pooled (the default): sent pre-packed
                result = self._enqueue.run_packed(connection, self._packed_call(payment, job_id))
            else:
                result = self._enqueue.run(connection, self._script_call(payment, job_id))
        except (redis.RedisError, OSError) as exc:
            if not redis_unavailable(exc):
                raise
            return self._spooled([payment], exc)[0]
        self._after_success()
        if not self._queue_listed:
            self._list_queue()
        return self._receipt(payment, result, job_id)

    def _list_queue(self) -> None:
        # Once per producer: enter the queue in RQ's set so `rq info` lists it before any
        # worker has started (ENQUEUE itself stays lean).
        with contextlib.suppress(redis.RedisError):
            self.connection.sadd(keys.RQ_QUEUES, self.keys.queue)
            self._queue_listed = True

    def enqueue_many(self, payments: Iterable[Payment]) -> list[Receipt]:
        """Enqueue many validated events in one round trip (a pipeline of script calls)."""
        batch = list(payments)
        if not batch:
            return []
        if not self.breaker.allow() or self._behind_spool(batch):
            return self._spool_only(batch)
        try:
            results = self._pipelined(batch)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                # Only on a fresh (or flushed) Redis: load the script, resend those events.
                self.connection.script_load(ENQUEUE)
                for i, r in zip(missing, self._pipelined([batch[i] for i in missing]), strict=True):
                    results[i] = r
            _raise_errors(results)
        except (redis.RedisError, OSError) as exc:
            if not redis_unavailable(exc):
                raise
            # Some may have reached Redis: spooling them too is safe, a flush reports them
            # as duplicates.
            return self._spooled(batch, exc)
        self._after_success()
        if not self._queue_listed:
            self._list_queue()
        return [self._receipt(p, r) for p, r in zip(batch, results, strict=True)]

    def _pipelined(self, batch: list[Payment]) -> list[Any]:
        with self.connection.pipeline(transaction=False) as pipe:
            for payment in batch:
                self._enqueue.add_to(pipe, self._script_call(payment, payment.job_id))
            return list(pipe.execute(raise_on_error=False))

    def close(self) -> None:
        """Close the connection and stop watching for Redis: what is still spooled stays on
        disk for the next producer on this spool directory."""
        self._closed.set()
        self.connection.close()
        if self.spool is not None:
            self.spool.close()


class AsyncProducer(_ProducerBase):
    """The asyncio twin of :class:`Producer` (``redis.asyncio``), for async web frameworks.

    Same validation, ids, duplicate detection and spool; the spool append is a small
    synchronous file write (~0.1 ms), cheaper than a hop to a thread.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        connection: redis.asyncio.Redis | None = None,
        spool: Spool | bool = True,
    ) -> None:
        super().__init__(settings, spool=spool)
        self._own_connection = connection is None
        self._owner: tuple[int, asyncio.AbstractEventLoop] | None = None
        self.connection = connection or self._connect()
        self._queue_listed = False

    def _connect(self) -> redis.asyncio.Redis:
        return connect_async(
            self.settings.redis_url,
            pool_size=PRODUCER_POOL_SIZE,
            socket_timeout=self.settings.producer_timeout,
            socket_connect_timeout=self.settings.producer_timeout,
            retry=AsyncRetry(NoBackoff(), 0),
            health_check_interval=0,
            **NO_HANDSHAKE,
        )

    def _bind(self) -> None:
        # redis.asyncio's pool belongs to one event loop and, unlike the sync pool, does not
        # notice fork(): a connection opened before a fork or in another loop is not reused.
        owner = (os.getpid(), asyncio.get_running_loop())
        if self._owner is not None and self._owner != owner and self._own_connection:
            self.connection = self._connect()
        self._owner = owner

    async def enqueue(self, payment: Payment) -> Receipt:
        self._bind()
        if not self.breaker.allow() or self._behind_spool([payment]):
            return self._spool_only([payment])[0]
        job_id = payment.job_id
        call = self._script_call(payment, job_id)
        try:
            # A bound of our own besides the socket's (a pool wait, a slow connect); and
            # asyncio.timeout, not wait_for, which would start a task per call.
            async with asyncio.timeout(self.settings.producer_timeout * 2):
                result = await self._enqueue.run_async(self.connection, call)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            if not redis_unavailable(exc):
                raise
            return self._spooled([payment], exc)[0]
        self._after_success()
        if not self._queue_listed:
            await self._list_queue()
        return self._receipt(payment, result, job_id)

    async def _list_queue(self) -> None:
        with contextlib.suppress(redis.RedisError):
            await self.connection.sadd(keys.RQ_QUEUES, self.keys.queue)
            self._queue_listed = True

    async def enqueue_many(self, payments: Iterable[Payment]) -> list[Receipt]:
        self._bind()
        batch = list(payments)
        if not batch:
            return []
        if not self.breaker.allow() or self._behind_spool(batch):
            return self._spool_only(batch)
        try:
            results = await self._pipelined(batch)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                await self.connection.script_load(ENQUEUE)
                again = await self._pipelined([batch[i] for i in missing])
                for i, r in zip(missing, again, strict=True):
                    results[i] = r
            _raise_errors(results)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            if not redis_unavailable(exc):
                raise
            return self._spooled(batch, exc)
        self._after_success()
        if not self._queue_listed:
            await self._list_queue()
        return [self._receipt(p, r) for p, r in zip(batch, results, strict=True)]

    async def _pipelined(self, batch: list[Payment]) -> list[Any]:
        async with self.connection.pipeline(transaction=False) as pipe:
            for payment in batch:
                self._enqueue.add_to(pipe, self._script_call(payment, payment.job_id))
            return list(await pipe.execute(raise_on_error=False))

    async def aclose(self) -> None:
        """The asyncio twin of :meth:`Producer.close`."""
        self._closed.set()
        await self.connection.aclose()
        if self.spool is not None:
            self.spool.close()


_default: Producer | None = None
_default_async: AsyncProducer | None = None
# Guards building the defaults. Never held while calling anything that takes it again:
# configure() and default_producer() each take it once (a threading.Lock is not reentrant,
# and a first enqueue_payment() that called configure() under it hung forever).
_default_lock = threading.Lock()


def _reset_lock_after_fork() -> None:
    # A fork while another thread held the lock would leave the child's copy locked forever.
    global _default_lock
    _default_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_after_fork)


def configure(
    settings: Settings | None = None, *, connection: redis.Redis | None = None
) -> Producer:
    """Set the producer that :func:`enqueue_payment` uses (default: from the environment)."""
    global _default, _default_async
    producer = Producer(settings, connection=connection)
    with _default_lock:
        _default = producer
        _default_async = None
    return producer


def default_producer() -> Producer:
    """The producer :func:`enqueue_payment` uses: built from the environment on first use,
    exactly once however many threads make that first call together."""
    global _default
    producer = _default
    if producer is not None:
        return producer
    with _default_lock:
        if _default is None:
            _default = Producer()
        return _default


def default_async_producer() -> AsyncProducer:
    """The asyncio twin of :func:`default_producer`, sharing its settings when configured."""
    global _default_async
    producer = _default_async
    if producer is not None:
        return producer
    with _default_lock:
        if _default_async is None:
            _default_async = AsyncProducer(_default.settings if _default else None)
        return _default_async


def _validated(fields: dict[str, Any]) -> Payment:
    try:
        return validate_payment(**fields)
    except ValidationError as exc:
        for field in exc.errors:
            metrics.REJECTED.labels(field).inc()
        raise


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
    anything touches Redis. Never waits long on Redis (``INGEST_PRODUCER_TIMEOUT``): when
    Redis is unreachable the event is kept in the local spool and the receipt says
    ``spooled``; only a full spool raises (:class:`ingest.SpoolFullError`). Enqueueing the
    same event again returns a receipt with ``duplicate=True``.
    """
    fields = dict(locals())
    fields.pop("producer")
    payment = _validated(fields)
    return (producer or default_producer()).enqueue(payment)


async def enqueue_payment_async(
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
    producer: AsyncProducer | None = None,
) -> Receipt:
    """The asyncio twin of :func:`enqueue_payment`: same validation, ids and spool."""
    fields = dict(locals())
    fields.pop("producer")
    payment = _validated(fields)
    return await (producer or default_async_producer()).enqueue(payment)


def _validate_all(
    events: Iterable[Mapping[str, Any]],
) -> tuple[list[Any], list[tuple[int, Payment]]]:
    results: list[Any] = []
    valid: list[tuple[int, Payment]] = []
    for index, event in enumerate(events):
        try:
            valid.append((index, payment_from_mapping(dict(event))))
            results.append(None)
        except ValidationError as exc:
            for field in exc.errors:
                metrics.REJECTED.labels(field).inc()
            results.append(Rejected(index, exc))
    return results, valid


def _merge(
    results: list[Any], valid: list[tuple[int, Payment]], receipts: list[Receipt]
) -> list[Receipt | Rejected]:
    for (index, _), receipt in zip(valid, receipts, strict=True):
        results[index] = receipt
    return list(results)


def enqueue_payments(
    events: Iterable[Mapping[str, Any]], *, producer: Producer | None = None
) -> list[Receipt | Rejected]:
    """Validate and enqueue many events (API field names) in one round trip.

    Returns one result per event, in order: a :class:`Receipt`, or :class:`Rejected` with
    the validation error for an event that was not queued. Invalid events do not stop the
    valid ones.
    """
    results, valid = _validate_all(events)
    receipts = (producer or default_producer()).enqueue_many(p for _, p in valid)
    return _merge(results, valid, receipts)


async def enqueue_payments_async(
    events: Iterable[Mapping[str, Any]], *, producer: AsyncProducer | None = None
) -> list[Receipt | Rejected]:
    """The asyncio twin of :func:`enqueue_payments`."""
    results, valid = _validate_all(events)
    receipts = await (producer or default_async_producer()).enqueue_many(p for _, p in valid)
    return _merge(results, valid, receipts)
