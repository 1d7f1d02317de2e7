"""What one demo run starts and owns, and the one count every run ends with.

:class:`DemoStack` holds the embedded redis-server, the sandbox (in its own process) and the
``python -m ingest worker`` processes. :meth:`DemoStack.count` says where every enqueued event
is, by transaction id: recorded by the API, dead-lettered, still somewhere in Redis, or lost.
It reads Redis and the API's records independently of the system's own counters, which
:func:`~ingest.stats.read_accounting` gives beside it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import cast

from ingest import keys
from ingest.connection import connect
from ingest.embedded import RedisServer
from ingest.models import Payment
from ingest.producer import Producer, Receipt
from ingest.sandbox import DEFAULT_WEBSITE_ID, DEFAULT_WEBSITE_KEY, SandboxProcess
from ingest.settings import Settings
from ingest.stats import Accounting, read_accounting

QUEUE = "payments"
# Pipelines of this many enqueues: one round trip each, none holding Redis for long.
_ENQUEUE_BATCH = 2000
# The places in Redis an event can be, in the order the count reads them.
_REDIS_PLACES = ("queued", "in_flight", "scheduled", "deferred", "dead", "parked")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """The ``INGEST_*`` settings the demo's worker processes run with."""

    max_attempts: int
    backoff_base: float
    backoff_max: float
    lease_seconds: int = 20
    request_timeout: float = 10.0

    def environment(self, redis_url: str, api_url: str, workdir: Path) -> dict[str, str]:
        """This process's environment without any ``INGEST_*`` of the user's (a queue name
        or a Redis URL of theirs must not leak into the demo), plus the demo's settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
        env.update(
            {
                "INGEST_REDIS_URL": redis_url,
                "INGEST_API_URL": api_url,
                "INGEST_API_KEY": DEFAULT_WEBSITE_KEY,
                "INGEST_QUEUE": QUEUE,
                "INGEST_MAX_ATTEMPTS": str(self.max_attempts),
                "INGEST_BACKOFF_BASE": str(self.backoff_base),
                "INGEST_BACKOFF_MAX": str(self.backoff_max),
                "INGEST_LEASE_SECONDS": str(self.lease_seconds),
                "INGEST_REQUEST_TIMEOUT": str(self.request_timeout),
                "INGEST_SPOOL_DIR": str(workdir / "spool"),
                "INGEST_LOG_LEVEL": "WARNING",
            }
        )
        return env


@dataclass
class DemoWorker:
    """One ``python -m ingest worker`` child; its output goes to ``log``."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> int:
        """SIGKILL, as the kernel's OOM killer or a lost machine would; the exit code."""
        self.process.send_signal(signal.SIGKILL)
        return self.process.wait()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (it hands back what it holds), SIGKILL after ``timeout``."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass(frozen=True, slots=True)
class EventCount:
    """Where every event enqueued by the demo is, by transaction id."""

    enqueued: int
    delivered: int
    """Recorded by the API and no longer anywhere in Redis."""
    resent: int
    """Delivered events the API received more than once (and recorded once)."""
    dead: int
    still_queued: int
    """Queued, in flight, scheduled, deferred or parked."""
    lost: int
    places: dict[str, str] = field(repr=False)
    """Job id -> delivered, dead, lost, or the place in Redis."""
    first_received: datetime | None
    """When the API received the first of these events (its clock)."""
    last_received: datetime | None
    """When the API first received the last of them."""

    @property
    def delivery_window(self) -> float:
        """Seconds from the API's first reception of an event to its last."""
        if self.first_received is None or self.last_received is None:
            return 0.0
        return (self.last_received - self.first_received).total_seconds()


class DemoStack:
    """The Redis, the sandbox and the workers of one demo run."""

    def __init__(
        self,
        redis_server: RedisServer,
        sandbox: SandboxProcess,
        workdir: Path,
        worker_settings: WorkerSettings,
    ) -> None:
        self.redis_server = redis_server
        self.sandbox = sandbox
        self.workdir = workdir
        self.worker_settings = worker_settings
        self.keys = keys.QueueKeys(QUEUE)
        # The demo needs no configuration and takes none: an unused prefix keeps the user's
        # INGEST_* (a queue name, or a value that would not even validate) out of it, as
        # WorkerSettings.environment keeps them out of the workers.
        # (pydantic-settings takes _env_prefix at init; its mypy plugin does not know it.)
        self.settings = Settings(  # type: ignore[call-arg]
            _env_prefix="INGEST_DEMO_READS_NO_ENVIRONMENT_",
            redis_url=redis_server.url,
            api_url=sandbox.url,
            api_key=DEFAULT_WEBSITE_KEY,  # type: ignore[arg-type]
            queue=QUEUE,
            spool_dir=workdir / "spool",
        )
        self.connection = connect(self.settings.redis_url)
        self.producer = Producer(self.settings, connection=self.connection)
        self.workers: list[DemoWorker] = []
        self.started_at: float | None = None
        """``time.monotonic()`` when the workers were started."""
        self._events: dict[str, tuple[str, bool]] = {}  # job id -> (transaction id, refunded)

    def close(self) -> None:
        self.stop_workers()
        self.connection.close()
        self.connection.connection_pool.disconnect()

    # -- events ----------------------------------------------------------------------------

    def enqueue(self, payments: Sequence[Payment]) -> list[Receipt]:
        """Enqueue in a few pipelined round trips; remembers every event that was new."""
        receipts: list[Receipt] = []
        for start in range(0, len(payments), _ENQUEUE_BATCH):
            batch = payments[start : start + _ENQUEUE_BATCH]
            for payment, receipt in zip(batch, self.producer.enqueue_many(batch), strict=True):
                receipts.append(receipt)
                if receipt.status in ("queued", "deferred"):
                    self._events[receipt.job_id] = (payment.transaction_id, payment.refunded)
        return receipts

    # -- workers ---------------------------------------------------------------------------

    def start_workers(self, count: int) -> None:
        env = self.worker_settings.environment(
            self.settings.redis_url, self.sandbox.url, self.workdir
        )
        for index in range(count):
            name = f"demo-{index + 1}"
            log = self.workdir / f"{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "ingest", "worker", "--name", name],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            self.workers.append(DemoWorker(name, process, log))
        self.started_at = time.monotonic()

    def stop_workers(self) -> None:
        # SIGTERM them all first, then wait: they shut down side by side.
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in self.workers:
            worker.stop()

    def since_start(self) -> float:
        """Seconds since the workers were started (0 before)."""
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

    # -- looking ---------------------------------------------------------------------------

    def accounting(self) -> Accounting:
        return read_accounting(self.connection, QUEUE)

    def in_flight_of(self, worker: DemoWorker) -> list[str]:
        """Job ids ``worker`` holds a lease on (RQ's started registry: ``{id}:{worker}``)."""
        suffix = f":{worker.name}"
        raw = cast("list[bytes]", self.connection.zrange(self.keys.started, 0, -1))
        members = (keys.text(m) for m in raw)
        return [m.removesuffix(suffix) for m in members if m.endswith(suffix)]

    def count(self) -> EventCount:
        """Where is each enqueued event? Redis first (one MULTI/EXEC of reads), then the
        API's records: an event acknowledged between the two reads is still found."""
        in_redis = self._places_in_redis()
        records = {
            (r["transaction_id"], r["refunded"]): r
            for r in self.sandbox.records(website=DEFAULT_WEBSITE_ID)
            if r["status"] == "recorded"
        }
        places: dict[str, str] = {}
        received: list[datetime] = []
        resent = 0
        for job_id, event in self._events.items():
            record = records.get(event)
            if record is not None:
                received.append(datetime.fromisoformat(record["first_received_at"]))
            if job_id in in_redis:
                places[job_id] = in_redis[job_id]
            elif record is not None:
                places[job_id] = "delivered"
                resent += record["attempts"] > 1
            else:
                places[job_id] = "lost"
        tally = Counter(places.values())
        return EventCount(
            enqueued=len(self._events),
            delivered=tally["delivered"],
            resent=resent,
            dead=tally["dead"],
            still_queued=sum(tally[p] for p in _REDIS_PLACES if p != "dead"),
            lost=tally["lost"],
            places=places,
            first_received=min(received, default=None),
            last_received=max(received, default=None),
        )

    def _places_in_redis(self) -> dict[str, str]:
        k = self.keys
        sites = [keys.text(s) for s in self.connection.hkeys(k.paused)]
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.lrange(k.queue, 0, -1)
            pipe.zrange(k.started, 0, -1)
            pipe.zrange(k.scheduled, 0, -1)
            pipe.zrange(k.deferred, 0, -1)
            pipe.hkeys(k.dead)
            for site in sites:
                pipe.lrange(k.parked(site), 0, -1)
            queued, started, scheduled, deferred, dead, *parked = pipe.execute()
        groups: Iterable[tuple[str, list[bytes]]] = zip(
            _REDIS_PLACES,
            (queued, started, scheduled, deferred, dead, [i for p in parked for i in p]),
            strict=True,
        )
        places: dict[str, str] = {}
        for place, ids in groups:
            for raw in ids:
                job_id = keys.text(raw)
                if place == "in_flight":
                    job_id = job_id.split(":", 1)[0]  # "{id}:{worker}"
                places[job_id] = place
        return places
