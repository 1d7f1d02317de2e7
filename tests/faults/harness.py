"""What every fault test needs: a Redis, a sandbox, worker processes, and one count.

:class:`FaultStack` enqueues events with known transaction ids, starts ``python -m ingest
worker`` processes against a Redis and a sandbox, and waits with bounded, explained waits.
:meth:`FaultStack.count` is the one count every test ends with: per transaction id, where
is the event now (delivered, dead-lettered, or still somewhere in Redis), cross-checked
with ``read_accounting(...)``; :func:`assert_accounted` asserts that nothing is lost.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import redis
from conftest import stop_process

from ingest import keys
from ingest.deadletter import DeadLetter, DeadLetterStore
from ingest.models import validate_payment
from ingest.producer import Producer
from ingest.sandbox import DEFAULT_WEBSITE_ID, DEFAULT_WEBSITE_KEY, SandboxServer
from ingest.settings import Settings
from ingest.stats import Accounting, read_accounting

PROJECT_ROOT = Path(__file__).resolve().parents[2]
QUEUE = "payments"

# Fast settings for every worker process of these tests (INGEST_* without the prefix).
# Lease 3 s: a dead worker's events come back after ~lease + lease/4.
FAST_WORKER_SETTINGS: dict[str, str] = {
    "lease_seconds": "3",
    "backoff_base": "0.05",
    "backoff_max": "0.5",
    "max_attempts": "8",
    "request_timeout": "1.0",
    "auth_probe_interval": "0.5",
    "shutdown_grace": "5",
    "concurrency": "64",
    "log_level": "INFO",
}

# Seconds a worker may take to exit after its grace period: cancel, hand back, deregister,
# and the interpreter's own exit (~0.5 s alone, more on a loaded 2-core machine).
EXIT_SLACK = 3.0

# Everything in Redis that says where an event is, read in one atomic step (a script), so
# an event moving between two places while we look is never missed nor counted twice.
_SNAPSHOT = """
local parked = {}
for _, k in ipairs(redis.call('KEYS', ARGV[1] .. '*')) do
  for _, id in ipairs(redis.call('LRANGE', k, 0, -1)) do parked[#parked + 1] = id end
end
return {
  redis.call('LRANGE', KEYS[1], 0, -1),
  redis.call('ZRANGE', KEYS[2], 0, -1),
  redis.call('ZRANGE', KEYS[3], 0, -1),
  redis.call('ZRANGE', KEYS[4], 0, -1),
  redis.call('HKEYS', KEYS[5]),
  parked,
}
"""
_PLACES = ("queued", "scheduled", "in_flight", "deferred", "dead", "parked")


@dataclass(frozen=True)
class EventCount:
    """Where every enqueued event is, by transaction id, plus the system's own figures."""

    label: str
    enqueued: int
    delivered: int  # recorded by the API and no longer anywhere in Redis
    duplicates: int  # POSTs the API reported as duplicates of a recorded payment
    dead: int
    still_queued: int  # queued, scheduled, in flight, deferred or parked
    lost: int
    lost_ids: list[str]
    placed_twice: list[str]  # in two places in Redis at once: a bug
    strangers: list[str]  # ids in Redis that were never enqueued here
    dead_but_recorded: list[str]  # dead-lettered although the API recorded it
    attempts: dict[str, int]  # event -> POSTs of it that reached the API's store
    places: dict[str, str]  # event (transaction id, see event_label) -> where it is
    accounting: Accounting | None
    accounting_error: str | None = None

    @property
    def max_attempts_seen(self) -> int:
        return max(self.attempts.values(), default=0)

    def line(self) -> str:
        acc = self.accounting
        system = (
            f"read_accounting: enqueued={acc.enqueued} delivered={acc.delivered} "
            f"dead={acc.dead} in_system={acc.in_system} lost={acc.lost} "
            f"api_duplicates={acc.api_duplicates} retried={acc.retried} "
            f"replayed={acc.replayed} deferred_on_dead={acc.deferred_on_dead}"
            if acc is not None
            else f"read_accounting unavailable: {self.accounting_error}"
        )
        # Dead-lettered after its attempts ran out although the API had recorded it (a
        # timeout or dropped answer each time): not lost, but worth seeing.
        recorded = (
            f" dead-but-recorded={len(self.dead_but_recorded)}" if self.dead_but_recorded else ""
        )
        return (
            f"[{self.label}] enqueued={self.enqueued} delivered={self.delivered} "
            f"duplicates={self.duplicates} dead-lettered={self.dead} "
            f"still-queued={self.still_queued} lost={self.lost}{recorded} | {system}"
        )


def assert_accounted(count: EventCount, *, drained: bool = True) -> None:
    """Nothing lost, by our count and by the system's own identity, and both agree."""
    print(count.line())
    assert count.lost == 0, f"{count.lost} events lost: {count.lost_ids[:20]}\n{count.line()}"
    assert not count.placed_twice, f"events in two places at once: {count.placed_twice[:20]}"
    assert not count.strangers, f"ids in Redis that were never enqueued: {count.strangers[:20]}"
    acc = count.accounting
    assert acc is not None, count.line()
    assert acc.lost == 0, f"read_accounting reports lost={acc.lost}\n{count.line()}"
    assert acc.enqueued == count.enqueued, count.line()
    assert acc.dead == count.dead, count.line()
    assert acc.in_system == count.still_queued, count.line()
    if drained:
        # Drained: nothing left but refunds deferred on a dead-lettered payment, which wait
        # for an operator's replay or purge (issue 13), each of them one of those refunds.
        assert count.still_queued == acc.deferred_on_dead, f"not drained: {count.line()}"
        dead = {tid for tid, place in count.places.items() if place == "dead"}
        waiting = {t for t, place in count.places.items() if place not in ("dead", "delivered")}
        assert {tid.removesuffix("#refund") for tid in waiting} <= dead, count.line()
        assert all(tid.endswith("#refund") for tid in waiting), count.line()
        # Redis counts each delivery once however often it was sent, as the API does.
        assert acc.delivered == count.delivered, count.line()


@dataclass
class WorkerProcess:
    """One ``python -m ingest worker`` child; stdout and stderr go to ``log``."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def send(self, sig: signal.Signals) -> None:
        if self.running:
            self.process.send_signal(sig)

    def wait(self, timeout: float, *, explain: Callable[[], str] = str) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.name} still running after {timeout:g} s\n{explain()}\n"
                f"its output:\n{self.output()[-4000:]}"
            ) from None

    def stop(self, timeout: float = 15.0) -> int:
        return stop_process(self.process, timeout)


def _die_with_pytest() -> Callable[[], None] | None:
    """A pre-exec hook: Linux sends the worker SIGTERM when this process dies.

    Fixture teardown stops workers normally; this covers pytest itself being killed (a CI
    timeout), which would otherwise leave workers retrying against a Redis that is gone.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def hook() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # pytest died between fork and prctl
            os._exit(1)

    return hook


def payment_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}_{i:05d}" for i in range(count)]


def event_label(transaction_id: str, refunded: bool) -> str:
    """How the count names an event: its transaction id, marked when it is the refund
    (a payment and its refund share the transaction id and are two events)."""
    return f"{transaction_id}#refund" if refunded else transaction_id


class FaultStack:
    """A Redis, a sandbox and the worker processes of one test, and how to count."""

    def __init__(
        self,
        redis_url: str,
        sandbox: SandboxServer,
        workdir: Path,
        *,
        queue: str = QUEUE,
        api_key: str = DEFAULT_WEBSITE_KEY,
    ) -> None:
        self.redis_url = redis_url
        self.sandbox = sandbox
        self.workdir = workdir
        self.queue = queue
        self.api_key = api_key
        self.keys = keys.QueueKeys(queue)
        self.connection = redis.Redis.from_url(redis_url, socket_timeout=5)
        self.producer = Producer(
            Settings(redis_url=redis_url, queue=queue), connection=self.connection
        )
        self.enqueued: dict[str, str] = {}  # job id -> event label (see event_label)
        self.workers: list[WorkerProcess] = []
        self._snapshot = self.connection.register_script(_SNAPSHOT)

    # -- events ------------------------------------------------------------------------------

    def enqueue(
        self, transaction_ids: Iterable[str], *, refunded: bool = False, amount: str = "19.99"
    ) -> list[str]:
        """Enqueue one payment (or refund) per id; all must be new. Returns the ids."""
        payments = [
            validate_payment(
                amount=Decimal(amount), currency="USD", transaction_id=tid, refunded=refunded
            )
            for tid in transaction_ids
        ]
        receipts = []
        for start in range(0, len(payments), 1000):
            receipts += self.producer.enqueue_many(payments[start : start + 1000])
        fresh = [r for r in receipts if r.status in ("queued", "deferred")]
        assert len(fresh) == len(payments), Counter(r.status for r in receipts)
        for receipt in fresh:
            self.enqueued[receipt.job_id] = event_label(receipt.transaction_id, refunded)
        return [r.transaction_id for r in fresh]

    # -- worker processes --------------------------------------------------------------------

    def worker_env(self, **settings: str) -> dict[str, str]:
        """This process's environment minus any INGEST_* or REDIS_URL, plus ours."""
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("INGEST_") and name != "REDIS_URL"
        }
        merged = {**FAST_WORKER_SETTINGS, "spool_dir": str(self.workdir / "spool"), **settings}
        env.update({f"INGEST_{name.upper()}": value for name, value in merged.items()})
        env["INGEST_REDIS_URL"] = self.redis_url
        env["INGEST_API_URL"] = self.sandbox.url
        env["INGEST_API_KEY"] = self.api_key
        env["INGEST_QUEUE"] = self.queue
        return env

    def start_worker(
        self, *, burst: bool = False, name: str | None = None, **settings: str
    ) -> WorkerProcess:
        worker_name = name or f"fault-{os.getpid()}-{len(self.workers)}"
        command = [sys.executable, "-m", "ingest", "worker", "--name", worker_name]
        if burst:
            command.append("--burst")
        log = self.workdir / f"worker-{worker_name}.log"
        with log.open("wb") as out:
            # The project root as working directory: `-m ingest` imports this checkout.
            process = subprocess.Popen(
                command,
                env=self.worker_env(**settings),
                cwd=PROJECT_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_pytest(),
            )
        worker = WorkerProcess(worker_name, process, log)
        self.workers.append(worker)
        return worker

    def run_cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``python -m ingest ARGS`` against this stack (same environment as the workers)."""
        return subprocess.run(
            [sys.executable, "-m", "ingest", *args],
            env=self.worker_env(),
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    # -- looking -----------------------------------------------------------------------------

    def accounting(self) -> Accounting:
        return read_accounting(self.connection, self.queue)

    def dead_letters(self) -> list[DeadLetter]:
        return list(DeadLetterStore(self.connection, self.queue).iter())

    def wip_members(self) -> list[str]:
        return [m.decode() for m in self.connection.zrange(self.keys.started, 0, -1)]

    def count(self, label: str) -> EventCount:
        """Where is each enqueued event? Redis is read first, atomically, then the API's
        records: an event acknowledged between the two reads is then still found (the API
        recorded it before it left Redis)."""
        k = self.keys
        raw = self._snapshot(
            keys=[k.queue, k.scheduled, k.started, k.deferred, k.dead],
            args=[k.parked_prefix],
        )
        queued, scheduled, started, deferred, dead, parked = (
            [item.decode() for item in group] for group in raw
        )
        started = [member.split(":", 1)[0] for member in started]
        accounting: Accounting | None = None
        accounting_error: str | None = None
        try:
            accounting = self.accounting()
        except redis.RedisError as exc:
            accounting_error = f"{type(exc).__name__}: {exc}"
        records = {
            event_label(r["transaction_id"], r["refunded"]): r
            for r in self.sandbox.records(website=DEFAULT_WEBSITE_ID)
            if r["status"] == "recorded"
        }
        in_redis: dict[str, list[str]] = {}
        for place, ids in zip(
            _PLACES, (queued, scheduled, started, deferred, dead, parked), strict=True
        ):
            for job_id in ids:
                in_redis.setdefault(job_id, []).append(place)
        strangers = sorted(set(in_redis) - set(self.enqueued))
        places: dict[str, str] = {}
        placed_twice: list[str] = []
        lost_ids: list[str] = []
        dead_but_recorded: list[str] = []
        for job_id, tid in self.enqueued.items():
            where = in_redis.get(job_id, [])
            if len(where) > 1:
                placed_twice.append(f"{tid}: {where}")
            if where:
                places[tid] = where[0]
                if where[0] == "dead" and tid in records:
                    dead_but_recorded.append(tid)
            elif tid in records:
                places[tid] = "delivered"
            else:
                places[tid] = "lost"
                lost_ids.append(tid)
        tally = Counter(places.values())
        ours = set(self.enqueued.values())
        attempts = {tid: int(r["attempts"]) for tid, r in records.items() if tid in ours}
        return EventCount(
            label=label,
            enqueued=len(self.enqueued),
            delivered=tally["delivered"],
            duplicates=sum(n - 1 for n in attempts.values()),
            dead=tally["dead"],
            still_queued=sum(tally[p] for p in _PLACES if p != "dead"),
            lost=tally["lost"],
            lost_ids=lost_ids,
            placed_twice=placed_twice,
            strangers=strangers,
            dead_but_recorded=dead_but_recorded,
            attempts=attempts,
            places=places,
            accounting=accounting,
            accounting_error=accounting_error,
        )

    def explain(self) -> str:
        """The count and the workers' last words, for a failure message."""
        parts = []
        try:
            parts.append(self.count("at failure").line())
        except redis.RedisError as exc:
            parts.append(f"(no count: Redis unavailable: {exc})")
        parts.append(f"sandbox: {json.dumps(self.sandbox.stats())}")
        for worker in self.workers:
            state = "running" if worker.running else f"exited {worker.process.returncode}"
            tail = "\n    ".join(worker.output().splitlines()[-8:])
            parts.append(f"worker {worker.name} ({state}):\n    {tail}")
        return "\n".join(parts)

    def wait_for(
        self, what: str, condition: Callable[[Accounting], bool], *, timeout: float
    ) -> float:
        """Poll ``read_accounting`` until ``condition`` holds; seconds waited. Redis being
        briefly unreachable (a restart) is waited out, not an error."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            try:
                if condition(self.accounting()):
                    return time.monotonic() - started
            except redis.RedisError:
                pass
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout:g} s waiting for {what}\n{self.explain()}"
                )
            time.sleep(0.05)

    def wait_drained(self, *, timeout: float) -> float:
        return self.wait_for(
            "the queue to drain (nothing queued, in flight, scheduled, deferred or parked)",
            lambda a: a.in_system == 0,
            timeout=timeout,
        )

    def stop_workers(self, timeout: float = 15.0) -> list[int]:
        return [worker.stop(timeout) for worker in self.workers]

    def close(self) -> None:
        for worker in self.workers:
            worker.stop(timeout=10)
        self.connection.close()
        self.connection.connection_pool.disconnect()
