"""The RQ worker that keeps many payments in flight at once.

:class:`IngestWorker` is an ``rq.SimpleWorker``: it registers, heartbeats and dies like any
RQ worker (``rq info`` lists it, ``rq suspend`` pauses it, RQ's ``send_shutdown_command``
stops it), and its events are RQ jobs in RQ's queue and registries. What it changes is the
work loop: instead of one job at a time, an asyncio loop keeps up to ``INGEST_CONCURRENCY``
POSTs in flight over one pooled HTTP transport, and claims and acknowledges events in
batches with one Lua call each (:mod:`ingest.scripts`), which RQ's per-job bookkeeping (~57
commands a job) cannot do.

The loop, top to bottom (``_run`` repeats ``_poll_iteration`` until stopped, then
``_shutdown_gracefully``); what one run holds (connections, events in hand) is a ``_Run``:

1. ``_housekeep``, every second: heartbeat (RQ's worker key, and the leases of events in
   flight); reclaim events whose worker died; probe websites paused by an auth failure;
2. ``_claim`` as many events as the concurrency limit leaves room for, and start one
   ``_deliver`` task per event its credential's shared send rate admits now (the others
   wait for permits: :mod:`ingest.backpressure`);
3. ``_acknowledge`` finished requests in one batch: delivered, scheduled for retry,
   dead-lettered or parked; every outcome is decided by :func:`decide` from the classified
   answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import redis
import redis.asyncio
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from rq.suspension import is_suspended
from rq.worker import WorkerStatus

from . import keys, metrics
from .backpressure import Backpressure
from .connection import connect, connect_async, redis_unavailable
from .deadletter import api_message, dead_record
from .delivery import Outcome, PaymentsClient, Verdict, build_session
from .jobs import Claimed, job_args
from .keys import text
from .logs import fingerprint, get_logger
from .retry import RandomSource, RetryPolicy
from .scripts import (
    Acknowledgement,
    Dead,
    Delivered,
    Park,
    Retry,
    Return,
    ack,
    claim,
    reclaim,
    renew,
    unpause,
    waiting_async,
)
from .settings import Settings
from .timestamps import utc_iso
from .transport import HttpTransport

_IDLE_POLL = 0.1  # seconds between claims while the queue is empty
_TICK = 0.005  # batch window: finished requests are acknowledged together
# Leases are renewed, and expired ones reclaimed, this often: a SIGKILLed worker's events
# are back within INGEST_LEASE_SECONDS + this, and a live worker would have to stall for
# most of a lease to lose one. A pass costs a few Redis commands and well under a
# millisecond of CPU, whatever the lease.
_HOUSEKEEPING_EVERY = 1.0


@dataclass(slots=True)
class WorkerCounts:
    """What this process did, for logs and the end-of-run summary."""

    claimed: int = 0
    delivered: int = 0
    api_duplicates: int = 0
    retried: int = 0
    dead_lettered: int = 0
    parked: int = 0
    returned: int = 0
    reclaimed: int = 0
    stale: int = 0
    statuses: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Run:
    """What one run of the loop holds: its connections, and every event in hand."""

    aconn: redis.asyncio.Redis
    client: PaymentsClient
    backpressure: Backpressure  # how many may be in flight, and how fast each credential
    held: dict[str, Claimed] = field(default_factory=dict)  # leased to us, not acknowledged
    in_flight: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # requests out
    finished: list[Acknowledgement] = field(default_factory=list)  # answered, not yet acked
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # set when a request ends
    next_housekeeping: float = 0.0
    redis_backoff: float = 0.0  # seconds; doubles while Redis stays unavailable
    last_probe: dict[str, float] = field(default_factory=dict)  # paused website -> when
    probes: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # website -> probe


def decide(
    claimed: Claimed,
    outcome: Outcome,
    *,
    now: float,
    policy: RetryPolicy,
    random: RandomSource,
) -> Acknowledgement:
    """What the ``ACK`` script is to do with one event, given its request's outcome."""
    if outcome.verdict.delivered:
        return Delivered(claimed.job_id, api_duplicate=outcome.verdict is Verdict.DUPLICATE)
    message = api_message(claimed.body, outcome.message)
    if outcome.verdict is Verdict.AUTH:
        pause = {"status": outcome.status, "error": message, "since": utc_iso(now)}
        return Park(claimed.job_id, claimed.website, pause)
    attempts = claimed.attempts + 1
    history = [
        *claimed.history[-19:],
        {"at": utc_iso(now), "status": outcome.status, "error": message},
    ]
    if outcome.verdict is Verdict.TRANSIENT and policy.should_retry(attempts):
        due = now + policy.delay(attempts, random, outcome.retry_after)
        return Retry(claimed.job_id, due, attempts, history)
    reason = "rejected" if outcome.verdict is Verdict.PERMANENT else "exhausted"
    record = dead_record(
        claimed, outcome, reason=reason, attempts=attempts, history=history, now=now
    )
    return Dead(claimed.job_id, record)


class IngestWorker(SimpleWorker):
    """An RQ worker that delivers many payment events concurrently.

    Collaborators are injectable for tests: the Redis connection, a factory for the HTTP
    session (called inside the worker's event loop), the random source of the retry jitter
    and the clock.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        connection: redis.Redis | None = None,
        name: str | None = None,
        session_factory: Callable[[], HttpTransport] | None = None,
        random_source: RandomSource = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        settings.require_delivery_credentials()
        connection = connection or connect(settings.redis_url)
        queue = Queue(settings.queue, connection=connection, serializer=JSONSerializer)
        super().__init__(
            [queue],
            connection=connection,
            name=name,
            serializer=JSONSerializer,
            # RQ shows a worker as alive until its key expires: a few missed heartbeats.
            worker_ttl=max(10, settings.lease_seconds),
        )
        self.settings = settings
        self.keys = keys.QueueKeys(settings.queue)
        self.metrics = metrics.WorkerMetrics(settings.queue)
        self.policy = RetryPolicy(
            settings.max_attempts, settings.backoff_base, settings.backoff_max
        )
        self.counts = WorkerCounts()
        self._session_factory = session_factory
        self._random = random_source
        self._clock = clock
        self._stop_now = False
        self._suspended = False
        self._log = get_logger(worker=self.name, queue=settings.queue)

    # -- RQ's entry point --------------------------------------------------------------------

    def work(  # type: ignore[override]  # RQ's scheduling options do not apply here
        self, burst: bool = False, logging_level: str | None = "WARNING", **_: Any
    ) -> bool:
        """Deliver until stopped (or, with ``burst``, until nothing is left to do).

        ``burst`` ends when nothing is queued, in flight or scheduled for a retry; events of
        a website paused for an auth failure stay parked in Redis and are reported, and so
        do refunds deferred on a dead-lettered or parked payment (they wait for a person).
        """
        self.bootstrap(logging_level or "WARNING")
        self.connection.sadd(keys.RQ_QUEUES, self.keys.queue)  # so `rq info` lists it
        self._install_signal_handlers()
        self.set_state(WorkerStatus.BUSY)
        if self.settings.metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(self.settings.metrics_port, addr=self.settings.metrics_host)
        loop_factory = event_loop_factory()
        self._log.info(
            "worker started",
            concurrency=self.settings.concurrency,
            burst=burst,
            event_loop="asyncio" if loop_factory is None else "uvloop",
        )
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(self._run(burst))
        finally:
            try:
                self.teardown()  # type: ignore[no-untyped-call]
            except redis.RedisError as exc:
                # RQ forgets the worker when its key expires (worker_ttl).
                self._log.warning("could not deregister from redis", error=type(exc).__name__)
        self._log.info("worker stopped", **_summary(self.counts))
        return self.counts.claimed > 0

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGTERM, self._request_stop)

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        # First signal: stop claiming, let requests in flight finish within the grace period.
        # Second: stop now; what is still in flight goes back to the queue.
        if self._stop_requested:
            self._stop_now = True
        self._stop_requested = True

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self, burst: bool) -> None:
        run = self._start_run()
        try:
            # Checked before every pass: while Redis is down each pass raises, and a stop
            # request must still end the loop.
            while not self._stop_requested:
                try:
                    if await self._poll_iteration(run, burst):
                        break
                except (redis.RedisError, OSError) as exc:
                    if not redis_unavailable(exc):
                        raise
                    await self._back_off(run, exc)
            await self._shutdown_gracefully(run)
        finally:
            await run.client.aclose()
            await run.aconn.aclose()

    def _start_run(self) -> _Run:
        aconn = connect_async(self.settings.redis_url)
        concurrency = self.settings.concurrency
        http = (
            self._session_factory()
            if self._session_factory
            else build_session(self.settings, concurrency=concurrency)
        )
        backpressure = Backpressure(self.settings, self.keys, clock=self._clock)
        return _Run(aconn, PaymentsClient(self.settings, http), backpressure)

    async def _poll_iteration(self, run: _Run, burst: bool) -> bool:
        """One pass: housekeeping when due, claim and start, acknowledge what finished, wait.

        Returns True when a ``burst`` run has nothing left to do.
        """
        if self._clock() >= run.next_housekeeping:
            await self._housekeep(run)
            run.next_housekeeping = self._clock() + _HOUSEKEEPING_EVERY
        started = await self._claim(run)
        self.metrics.in_flight.set(len(run.in_flight))
        self.metrics.send_limit.set(int(run.backpressure.concurrency.limit))
        await self._acknowledge(run)
        run.redis_backoff = 0.0
        if run.in_flight or started:
            run.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.wake.wait(), timeout=run.backpressure.wait(0.25))
            # Let more requests finish so they are acknowledged together.
            await asyncio.sleep(_TICK)
            return False
        if burst and (self._suspended or await self._drained(run.aconn)):
            return True
        await asyncio.sleep(run.backpressure.wait(_IDLE_POLL) if run.held else _IDLE_POLL)
        return False

    async def _housekeep(self, run: _Run) -> None:
        """Tell RQ we are alive, renew our leases, put back the events of dead workers,
        forget old rate counts, and probe paused websites that are due."""
        now = self._clock()
        await asyncio.to_thread(self.heartbeat)
        await self._follow_suspension()
        if run.held:
            lease_until = now + self.settings.lease_seconds
            await renew(run.aconn, self.keys, run.held, worker=self.name, lease_until=lease_until)
        returned = await reclaim(run.aconn, self.keys, now=now)
        if returned:
            self.counts.reclaimed += returned
            self.metrics.reclaimed.inc(returned)
            self._log.warning("events of a dead worker put back on the queue", count=returned)
        old = [f for f in await run.aconn.hkeys(self.keys.rate) if int(f) < now - 120]
        if old:
            await run.aconn.hdel(self.keys.rate, *old)
        await self._probe_paused(run, now)

    async def _follow_suspension(self) -> None:
        # `rq suspend` holds every worker: we stop claiming, requests in flight finish.
        suspended = await asyncio.to_thread(is_suspended, self.connection, self)
        if suspended != self._suspended:
            self._suspended = suspended
            self.set_state(WorkerStatus.SUSPENDED if suspended else WorkerStatus.BUSY)
            self._log.warning("worker suspended by `rq suspend`" if suspended else "worker resumed")

    async def _claim(self, run: _Run) -> int:
        """Lease as many events as there is room for, and start sending each one its
        credential's send rate admits now (the rest wait here for permits); how many."""
        free = 0 if self._suspended else run.backpressure.room(len(run.in_flight))
        fresh: list[Claimed] = []
        if free > 0:
            now = self._clock()
            lease_until = now + self.settings.lease_seconds
            claims = await claim(
                run.aconn, self.keys, now=now, lease_until=lease_until, worker=self.name, limit=free
            )
            for claimed in claims:
                if claimed.job_id in run.held:
                    # Our own request for it is still out (its lease ran out and it was put
                    # back): CLAIM renewed our lease, and that request's answer settles it.
                    # Sending again would let the older answer be applied to the newer claim.
                    continue
                run.held[claimed.job_id] = claimed
                fresh.append(claimed)
        started = 0
        for claimed in await run.backpressure.admit(run.aconn, fresh):
            run.in_flight[claimed.job_id] = asyncio.create_task(self._deliver(run, claimed))
            started += 1
        self.counts.claimed += started
        return started

    async def _deliver(self, run: _Run, claimed: Claimed) -> None:
        """Send one event; what becomes of it waits in ``run.finished`` to be acknowledged."""
        started = time.perf_counter()
        try:
            # Bounded by the session's INGEST_REQUEST_TIMEOUT (build_session).
            outcome = await run.client.send(claimed.body, claimed.website_id)
        except Exception as exc:  # never lose an event to a bug in a send path
            outcome = Outcome(Verdict.TRANSIENT, None, f"{type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - started
        run.backpressure.report(claimed, outcome, elapsed, len(run.in_flight))
        status = "none" if outcome.status is None else str(outcome.status)
        self.counts.statuses[status] = self.counts.statuses.get(status, 0) + 1
        self.metrics.delivery_seconds.observe(elapsed)
        self.metrics.response(status)
        run.finished.append(
            decide(claimed, outcome, now=self._clock(), policy=self.policy, random=self._random)
        )
        run.in_flight.pop(claimed.job_id, None)
        run.wake.set()

    async def _acknowledge(self, run: _Run) -> None:
        """Record every finished request in one ``ACK`` call, then let go of those events."""
        if not run.finished:
            return
        batch = run.finished[:]
        stale = await ack(
            run.aconn,
            self.keys,
            batch,
            now=self._clock(),
            worker=self.name,
            dedup_window=self.settings.dedup_window,
        )
        del run.finished[: len(batch)]
        # One increment per outcome and batch, not a label lookup and a lock per event.
        tally: dict[str, int] = {}
        for entry in batch:
            run.held.pop(entry.job_id, None)
            outcome = self._count(entry)
            tally[outcome] = tally.get(outcome, 0) + 1
        for outcome, n in tally.items():
            self.metrics.outcomes[outcome].inc(n)
        if stale:
            self.counts.stale += stale
            self._log.warning(
                "outcomes for events whose lease had expired were skipped", count=stale
            )

    async def _back_off(self, run: _Run, exc: BaseException) -> None:
        # Redis is down, restarting or refusing writes for now: keep what we hold, back
        # off, try again. Leases may run out meanwhile; then another worker re-sends those
        # events and our late acknowledgements are skipped (the API dedups the resend).
        run.redis_backoff = min(5.0, max(0.1, run.redis_backoff * 2))
        self._log.warning(
            "redis unavailable, retrying", error=type(exc).__name__, retry_in=run.redis_backoff
        )
        stop_by = time.monotonic() + run.redis_backoff
        while not self._stop_requested and time.monotonic() < stop_by:
            await asyncio.sleep(0.05)

    async def _shutdown_gracefully(self, run: _Run) -> None:
        """Let requests in flight finish within the grace period, then hand back the rest.

        (Not ``_shutdown``: that is RQ's, which its own stop request calls.)
        """
        deadline = time.monotonic() + self.settings.shutdown_grace
        while run.in_flight and not self._stop_now and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        tasks = [*run.in_flight.values(), *run.probes.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        done_ids = {entry.job_id for entry in run.finished}
        run.finished.extend(Return(job_id) for job_id in list(run.held) if job_id not in done_ids)
        # Hand back within the grace period (at least one try): whatever cannot be written
        # back returns by itself when its lease expires, so waiting longer buys nothing.
        await self._hand_back(run, until=max(deadline, time.monotonic() + 1.0))

    async def _hand_back(self, run: _Run, *, until: float) -> None:
        attempt = 0
        while True:
            try:
                await self._acknowledge(run)
                return
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                if self._stop_now or time.monotonic() >= until:
                    self._log.warning(
                        "redis unavailable at shutdown: events in hand return when their "
                        "leases expire",
                        count=len(run.finished),
                    )
                    return
                await asyncio.sleep(min(0.5, 0.1 * 2**attempt))
                attempt += 1

    async def _drained(self, aconn: redis.asyncio.Redis) -> bool:
        """Nothing queued, in flight or scheduled, and every deferred refund waits for a
        person: for a dead-lettered payment (replay or purge) or a paused website's."""
        k = self.keys
        async with aconn.pipeline(transaction=False) as pipe:
            pipe.llen(k.queue)
            pipe.zcard(k.scheduled)
            pipe.zcard(k.started)
            pipe.zcard(k.deferred)
            queued, scheduled, started, deferred = (int(n) for n in await pipe.execute())
        if queued or scheduled or started:
            return False
        if not deferred:
            return True
        waits = await waiting_async(aconn, k)
        if not waits.complete or waits.blocked < waits.deferred:
            return False
        self._log.warning(
            "refunds left deferred for an operator",
            on_dead_payment=waits.on_dead,
            on_paused_website=waits.on_parked,
        )
        return True

    # -- websites paused by an auth failure ---------------------------------------------------

    async def _probe_paused(self, run: _Run, now: float) -> None:
        """Try one parked event per paused website now and then; success lifts the pause.

        An operator can ask for a probe now (``ingest:{q}:probe``, the console's button);
        whichever worker sees the request first runs it.
        """
        paused = await run.aconn.hgetall(self.keys.paused)
        if not paused:
            return
        for raw_site, raw_reason in paused.items():
            site = text(raw_site)
            requested = bool(await run.aconn.srem(self.keys.probe_requests, site))
            last = run.last_probe.get(site, 0.0)
            if not requested and now - last < self.settings.auth_probe_interval:
                continue
            probe = run.probes.get(site)
            if probe is not None and not probe.done():
                continue
            run.last_probe[site] = now
            # A task, not awaited here: a probe may take INGEST_REQUEST_TIMEOUT, longer than
            # a lease, and housekeeping must go on renewing our leases meanwhile.
            run.probes[site] = asyncio.create_task(
                self._probe_quietly(run, site, json.loads(raw_reason), now)
            )

    async def _probe_quietly(
        self, run: _Run, site: str, reason: dict[str, Any], now: float
    ) -> None:
        try:
            await self._probe(run, site, reason, now)
        except (redis.RedisError, OSError) as exc:
            # Redis went away mid-probe: the loop backs off by itself; the next pass probes.
            self._log.warning("auth probe interrupted", website=site, error=type(exc).__name__)

    async def _probe(self, run: _Run, site: str, reason: dict[str, Any], now: float) -> None:
        aconn = run.aconn
        await aconn.hset(
            self.keys.paused, site, json.dumps({**reason, "last_probe_at": utc_iso(now)})
        )
        parked_key = self.keys.parked(site)
        head = await aconn.lindex(parked_key, 0)
        if head is None:
            await unpause(aconn, self.keys, site)
            return
        data = await aconn.hget(keys.job_key(text(head)), "data")
        if data is None:
            await aconn.lrem(parked_key, 1, text(head))
            return
        args = job_args(data)
        outcome = await run.client.send(*args)
        if outcome.verdict is Verdict.AUTH:
            # The status and a hash of the message as stored: the message may quote the
            # customer, and the log is read by more people than the console.
            self._log.error(
                "delivery paused: the Payments API refuses our credentials",
                website=site,
                status=outcome.status,
                api_message_sha256=fingerprint(api_message(args.body, outcome.message)),
                paused_since=reason.get("since"),
            )
            return
        released = await unpause(aconn, self.keys, site)
        self._log.warning(
            "delivery resumed: credentials accepted again", website=site, released=released
        )

    def _count(self, entry: Acknowledgement) -> str:
        """Count one acknowledged outcome in ``self.counts``; its ``outcome`` label."""
        c = self.counts
        match entry:
            case Delivered(api_duplicate=duplicate):
                c.delivered += 1
                c.api_duplicates += int(duplicate)
                return "duplicate" if duplicate else "delivered"
            case Retry():
                c.retried += 1
                return "retried"
            case Dead():
                c.dead_lettered += 1
                return "dead_lettered"
            case Park(website=website, reason=reason):
                c.parked += 1
                self._log.error(
                    "delivery paused: the Payments API refuses our credentials",
                    website=website,
                    status=reason.get("status"),
                    api_message_sha256=fingerprint(str(reason.get("error", ""))),
                )
                return "parked"
            case Return():
                c.returned += 1
                return "returned"


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when the ``uvloop`` extra is installed, else None (asyncio's own).

    uvloop runs the same worker with less CPU per event (README, Performance); it is an
    extra because a checkout app, which imports this package for the producer, needs none
    of it, and uvloop has no Windows build.
    """
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _summary(counts: WorkerCounts) -> dict[str, Any]:
    return {
        "claimed": counts.claimed,
        "delivered": counts.delivered,
        "api_duplicates": counts.api_duplicates,
        "retried": counts.retried,
        "dead_lettered": counts.dead_lettered,
        "parked": counts.parked,
        "returned": counts.returned,
        "reclaimed": counts.reclaimed,
    }


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None) -> int:
    """Build a worker from settings and run it; the body of ``ingest worker``."""
    worker = IngestWorker(settings, name=name)
    worker.work(burst=burst)
    return 0
