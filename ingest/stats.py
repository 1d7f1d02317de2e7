"""The system-wide accounting, read from Redis alone, so any process can report it.

Every event enqueued is, at any instant, in exactly one place::

    enqueued = delivered + dead + purged + erased
               + queued + in_flight + scheduled + deferred + parked + rq_failed

:func:`read_accounting` takes one consistent snapshot (a MULTI/EXEC of reads) and
:attr:`Accounting.lost` is what is missing from that identity: it must be 0.

RQ's own tools are places too: ``in_flight`` includes ``rq_in_flight``, the events a plain
``rq worker`` is sending, and ``rq_failed`` counts events RQ moved to its failed registry
(``rq requeue`` puts them back). What RQ's tools delete outright (``rq empty``, which we do
not support) leaves no trace: it shows as ``lost``, which ``ingest stats`` labels as removed
outside ingest or lost.

``deferred`` includes :attr:`Accounting.deferred_on_dead`, the refunds that wait for a
dead-lettered payment: they move on only by an operator's replay or purge.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from . import keys
from .jobs import parse_rq_time
from .ratelimit import SendRateView, read_send_rates
from .scripts import waiting


@dataclass(frozen=True, slots=True)
class Accounting:
    enqueued: int
    duplicates: int
    delivered: int
    api_duplicates: int
    retried: int
    dead_lettered_total: int
    replayed: int
    purged: int
    erased: int
    queued: int
    in_flight: int
    scheduled: int
    deferred: int
    parked: int
    dead: int
    rate_per_second: float
    oldest_queued_age: float | None
    workers: int
    paused: dict[str, str] = field(default_factory=dict)
    rq_failed: int = 0  # in RQ's failed registry, put there by RQ's own tools
    rq_in_flight: int = 0  # of in_flight: being sent by a plain `rq worker`
    # Of ``deferred``: refunds waiting for a payment in the dead letters, which only an
    # operator's replay (then delivery) or purge moves on. Part of ``deferred``, not beside it.
    deferred_on_dead: int = 0
    send_rates: list[SendRateView] = field(default_factory=list)
    """Each credential's learned send rate and hold (not part of the snapshot: read after)."""

    @property
    def in_system(self) -> int:
        return self.queued + self.in_flight + self.scheduled + self.deferred + self.parked

    @property
    def lost(self) -> int:
        return self.enqueued - (
            self.delivered + self.dead + self.purged + self.erased + self.in_system + self.rq_failed
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["in_system"] = self.in_system
        data["lost"] = self.lost
        return data


def count_live_workers(connection: redis.Redis) -> int:
    """RQ workers whose heartbeat has not expired.

    RQ's workers set keeps a worker that never deregistered (SIGKILL, a lost host) until
    something cleans it; the worker's own key expires ``worker_ttl`` after its last
    heartbeat, so that key is what says it is alive. Read-only: nothing is cleaned here.
    """
    members = list(connection.smembers(keys.RQ_WORKERS))
    if not members:
        return 0
    with connection.pipeline(transaction=False) as pipe:
        for member in members:
            pipe.exists(member)
        return sum(int(found) for found in pipe.execute())


def read_accounting(connection: redis.Redis, queue: str, *, now: float | None = None) -> Accounting:
    k = keys.QueueKeys(queue)
    now = time.time() if now is None else now
    paused_sites = [keys.text(s) for s in connection.hkeys(k.paused)]
    with connection.pipeline(transaction=True) as pipe:
        pipe.hgetall(k.stats)
        pipe.llen(k.queue)
        pipe.zcard(k.started)
        pipe.zcard(k.scheduled)
        pipe.zcard(k.deferred)
        pipe.hlen(k.dead)
        pipe.hgetall(k.rate)
        pipe.lindex(k.queue, 0)
        pipe.hgetall(k.paused)
        pipe.zcard(k.rq_failed)
        # RQ scores its executions by their own expiry; ours sit from LEASE_SCORE_OFFSET up.
        pipe.zcount(k.started, "-inf", f"({keys.LEASE_SCORE_OFFSET}")
        for site in paused_sites:
            pipe.llen(k.parked(site))
        results = pipe.execute()
    raw_stats, queued, in_flight, scheduled, deferred, dead, rate, head, paused = results[:9]
    rq_failed, rq_in_flight = results[9:11]
    parked = sum(int(n) for n in results[11:])
    counters = {keys.text(key): int(value) for key, value in raw_stats.items()}
    window = [int(v) for s, v in rate.items() if now - 60 <= int(s) < now]
    oldest: float | None = None
    if head is not None:
        enqueued_at = connection.hget(keys.job_key(keys.text(head)), "enqueued_at")
        if enqueued_at:
            oldest = max(0.0, now - parse_rq_time(enqueued_at))
    waits = waiting(connection, k) if int(deferred) else None
    return Accounting(
        enqueued=counters.get("enqueued", 0),
        duplicates=counters.get("duplicates", 0),
        delivered=counters.get("delivered", 0),
        api_duplicates=counters.get("api_duplicates", 0),
        retried=counters.get("retried", 0),
        dead_lettered_total=counters.get("dead_lettered", 0),
        replayed=counters.get("replayed", 0),
        purged=counters.get("purged", 0),
        erased=counters.get("erased", 0),
        queued=int(queued),
        in_flight=int(in_flight),
        scheduled=int(scheduled),
        deferred=int(deferred),
        parked=parked,
        dead=int(dead),
        rate_per_second=sum(window) / 60.0,
        oldest_queued_age=oldest,
        workers=count_live_workers(connection),
        paused={keys.text(s): keys.text(r) for s, r in paused.items()},
        rq_failed=int(rq_failed),
        rq_in_flight=int(rq_in_flight),
        deferred_on_dead=waits.on_dead if waits else 0,
        send_rates=read_send_rates(connection, queue, now=now),
    )
