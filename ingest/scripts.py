"""Every multi-step change to the queue, as one Lua script each, so each is atomic.

Key names come from :mod:`ingest.keys` (see its table); each script lists the keys it
touches. Each script is paired with the one function that runs it (as RQ's ``scripts.py``
does), so no caller builds KEYS and ARGV by position: ``await claim(conn, keys, now=...)``.
Scripts run with ``EVALSHA``: one round trip; a Redis that does not know the script yet
(fresh, restarted or flushed) answers NOSCRIPT, and the script is loaded and run again.

Why Lua rather than MULTI/EXEC: several steps branch on what they read (is the event a
duplicate? does the worker still hold its lease?), which a transaction cannot do atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from .jobs import Claimed
from .keys import JOB_PREFIX, RQ_QUEUES, QueueKeys, job_key, text
from .timestamps import RQ_TIMESPEC, utc_iso

# Due retries CLAIM moves to the queue, and expired leases RECLAIM returns, per call.
_BATCH_LIMIT = 1000


class Script:
    """One Lua script, run by SHA with a NOSCRIPT fallback.

    Plain ``EVALSHA`` rather than redis-py's ``Script`` wrapper, which adds ~30 µs to every
    call (and, in a pipeline, a ``SCRIPT EXISTS`` round trip).
    """

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis names scripts so

    def run(self, conn: redis.Redis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return conn.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            conn.script_load(self.source)
            return conn.evalsha(self.sha, len(keys), *keys, *args)

    async def run_async(
        self, conn: redis.asyncio.Redis, keys: Sequence[Any], args: Sequence[Any]
    ) -> Any:
        try:
            return await conn.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await conn.script_load(self.source)
            return await conn.evalsha(self.sha, len(keys), *keys, *args)


# -- ENQUEUE -------------------------------------------------------------------------------------

# Enqueue one event, or report it as a duplicate.
# KEYS: 1 rq:job:{id}  2 rq:queue:{q}  3 ingest:{q}:stats  4 ingest:{q}:done:{id}
#       5 ingest:{q}:dead  6 rq:job:{payment id}  7 rq:deferred:{q}
#       (and rq:job:{payment id}:dependents, derived from KEYS[6], for a deferred refund)
# ARGV: 1 id  2 data  3 now (ISO)  4 queue name  5 website  6 description  7 "1" if refund
#       8 now (unix)
# Returns 1 queued, 2 deferred (a refund waiting for its payment), 0 duplicate.
# This is the checkout's hot path: every argument costs latency, so the queue is entered in
# RQ's ``rq:queues`` set by the worker at start and by REPLAY, not on every enqueue.
# A refund whose payment is still in the system (queued, in flight, scheduled for retry) waits
# in RQ's deferred registry and is released when that payment is delivered or dead-lettered.
ENQUEUE = """
local job_key, queue_key, stats_key, done_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local dead_key, payment_key, deferred_key = KEYS[5], KEYS[6], KEYS[7]
local id, data, now_iso, queue_name = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local website, description, is_refund, now = ARGV[5], ARGV[6], ARGV[7] == '1', ARGV[8]
if redis.call('EXISTS', job_key) == 1 or redis.call('EXISTS', done_key) == 1
   or redis.call('HEXISTS', dead_key, id) == 1 then
  redis.call('HINCRBY', stats_key, 'duplicates', 1)
  return 0
end
local status = 'queued'
if is_refund and redis.call('EXISTS', payment_key) == 1 then
  status = 'deferred'
end
redis.call('HSET', job_key, 'data', data, 'created_at', now_iso, 'enqueued_at', now_iso,
  'origin', queue_name, 'status', status, 'description', description, 'result_ttl', '0',
  'timeout', '60', 'website', website, 'attempts', '0')
redis.call('HINCRBY', stats_key, 'enqueued', 1)
if status == 'deferred' then
  redis.call('SADD', payment_key .. ':dependents', id)
  redis.call('ZADD', deferred_key, now, id)
  return 2
end
redis.call('RPUSH', queue_key, id)
return 1
"""


class Enqueue:
    """``ENQUEUE`` for one queue, on the checkout's hot path.

    Everything goes to redis-py as bytes, the queue's own keys encoded once here: redis-py
    then packs the command without encoding each argument again (measurable per checkout).
    :meth:`arguments` builds one event's keys and arguments; :meth:`run`, :meth:`run_async`
    and :meth:`add_to` (a pipeline) send them. Each returns (or the pipeline answers)
    1 queued, 2 deferred, 0 duplicate.
    """

    script = Script(ENQUEUE)

    def __init__(self, keys: QueueKeys) -> None:
        self._keys = keys
        self._queue = keys.queue.encode()
        self._stats = keys.stats.encode()
        self._dead = keys.dead.encode()
        self._deferred = keys.deferred.encode()
        self._name = keys.name.encode()
        sha = self.script.sha.encode()
        self._sha = b"$%d\r\n%s\r\n" % (len(sha), sha)

    def arguments(
        self,
        *,
        job_id: str,
        data: str,
        website: str,
        description: str,
        refund: bool,
        payment_job_id: str,
        now: datetime,
    ) -> tuple[list[bytes], list[bytes]]:
        keys = [
            job_key(job_id).encode(),
            self._queue,
            self._stats,
            self._keys.done(job_id).encode(),
            self._dead,
            job_key(payment_job_id).encode(),
            self._deferred,
        ]
        args = [
            job_id.encode(),
            data.encode(),
            utc_iso(now, timespec=RQ_TIMESPEC).encode(),
            self._name,
            website.encode(),
            description.encode(),
            b"1" if refund else b"0",
            repr(now.timestamp()).encode(),
        ]
        return keys, args

    def run(self, conn: redis.Redis, call: tuple[list[bytes], list[bytes]]) -> int:
        """Send ``EVALSHA`` as one pre-packed write on a pooled connection.

        redis-py would pack the ~18 arguments again, one ``encode`` and ``isinstance`` chain
        each, and record each command for its observability hooks: a quarter of an
        enqueue's CPU. The reply, errors and NOSCRIPT fallback are the same; a connection
        that fails mid-call is dropped, as redis-py drops it.
        """
        if conn.connection is not None:  # a single-connection client: no pool to borrow from
            return int(self.script.run(conn, *call))
        packed = self.packed(call)
        try:
            return int(_send_packed(conn, packed))
        except NoScriptError:
            conn.script_load(self.script.source)
            return int(_send_packed(conn, packed))

    def packed(self, call: tuple[list[bytes], list[bytes]]) -> bytes:
        """The call as RESP: ``EVALSHA sha 7 keys... args...``, ready for the socket."""
        keys, args = call
        numkeys = str(len(keys)).encode()
        parts = [b"*", str(3 + len(keys) + len(args)).encode(), b"\r\n$7\r\nEVALSHA\r\n"]
        parts += (self._sha, b"$", str(len(numkeys)).encode(), b"\r\n", numkeys, b"\r\n")
        for item in (*keys, *args):
            parts += (b"$", str(len(item)).encode(), b"\r\n", item, b"\r\n")
        return b"".join(parts)

    async def run_async(
        self, conn: redis.asyncio.Redis, call: tuple[list[bytes], list[bytes]]
    ) -> int:
        return int(await self.script.run_async(conn, *call))

    def add_to(
        self,
        pipe: redis.client.Pipeline | redis.asyncio.client.Pipeline,
        call: tuple[list[bytes], list[bytes]],
    ) -> None:
        """Queue the call in a pipeline. A pipeline answers NOSCRIPT per call instead of
        raising: load ``ENQUEUE`` (``SCRIPT LOAD``), then send those calls again."""
        keys, args = call
        pipe.evalsha(self.script.sha, len(keys), *keys, *args)


def _send_packed(conn: redis.Redis, packed: bytes) -> Any:
    pool = conn.connection_pool
    # redis-py's Connection is untyped here: narrowed at this one seam.
    connection: Any = pool.get_connection()
    try:
        connection.send_packed_command([packed], check_health=False)
        return connection.read_response()
    except redis.ResponseError:
        raise  # an error reply, read in full: the connection is fine
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


# -- CLAIM ---------------------------------------------------------------------------------------

# Claim up to N events for one worker, after promoting retries that are due.
# KEYS: 1 rq:queue:{q}  2 rq:wip:{q}  3 rq:scheduled:{q}  4 ingest:{q}:paused
# ARGV: 1 now (unix)  2 lease expiry (unix)  3 worker name  4 N  5 job key prefix
#       6 parked key prefix  7 promotion limit
# Returns a flat array: id, data, website, attempts, history ... per event.
# Each claimed event is in RQ's started registry as "{id}:{worker}" scored by its lease
# expiry; if the worker dies the lease runs out and RECLAIM puts the event back.
# Events of a website paused for an auth failure are moved aside to its parked list.
CLAIM = """
local queue_key, started_key, scheduled_key, paused_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, lease_until, worker, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local job_prefix, parked_prefix, promote_limit = ARGV[5], ARGV[6], tonumber(ARGV[7])
local due = redis.call('ZRANGEBYSCORE', scheduled_key, '-inf', now, 'LIMIT', 0, promote_limit)
if #due > 0 then
  redis.call('ZREM', scheduled_key, unpack(due))
  redis.call('RPUSH', queue_key, unpack(due))
  for _, id in ipairs(due) do
    redis.call('HSET', job_prefix .. id, 'status', 'queued')
  end
end
local ids = redis.call('LPOP', queue_key, limit)
if not ids then return {} end
local any_paused = redis.call('EXISTS', paused_key) == 1
local out = {}
local lease = {}
for _, id in ipairs(ids) do
  local key = job_prefix .. id
  local f = redis.call('HMGET', key, 'data', 'website', 'attempts', 'history')
  if f[1] then
    local website = f[2] or '-'  -- keys.DEFAULT_SITE
    if any_paused and redis.call('HEXISTS', paused_key, website) == 1 then
      redis.call('RPUSH', parked_prefix .. website, id)
      redis.call('HSET', key, 'status', 'parked')
    else
      redis.call('HSET', key, 'status', 'started', 'started_at', now)
      lease[#lease + 1] = lease_until
      lease[#lease + 1] = id .. ':' .. worker
      out[#out + 1] = id
      out[#out + 1] = f[1]
      out[#out + 1] = website
      out[#out + 1] = f[3] or '0'
      out[#out + 1] = f[4] or ''
    end
  end
end
if #lease > 0 then
  redis.call('ZADD', started_key, unpack(lease))
end
return out
"""
_CLAIM = Script(CLAIM)
_CLAIM_FIELDS = 5  # id, data, website, attempts, history


async def claim(
    conn: redis.asyncio.Redis,
    keys: QueueKeys,
    *,
    now: float,
    lease_until: float,
    worker: str,
    limit: int,
) -> list[Claimed]:
    """Lease up to ``limit`` events to ``worker`` until ``lease_until``, oldest first."""
    rows = await _CLAIM.run_async(
        conn,
        (keys.queue, keys.started, keys.scheduled, keys.paused),
        (now, lease_until, worker, limit, JOB_PREFIX, keys.parked_prefix, _BATCH_LIMIT),
    )
    return [
        Claimed.from_fields(*rows[i : i + _CLAIM_FIELDS])
        for i in range(0, len(rows), _CLAIM_FIELDS)
    ]


# -- ACK -----------------------------------------------------------------------------------------

# Record the outcome of a batch of finished requests.
# KEYS: 1 rq:wip:{q}  2 rq:queue:{q}  3 rq:scheduled:{q}  4 ingest:{q}:stats
#       5 ingest:{q}:dead  6 ingest:{q}:dead:index  7 rq:deferred:{q}  8 ingest:{q}:rate
#       9 ingest:{q}:paused
# ARGV: 1 now (unix)  2 worker name  3 dedup window (s)  4 done key prefix  5 job key prefix
#       6 parked key prefix  7 JSON array of outcomes, each one of
#         ["ok", id, api_duplicate]                      delivered
#         ["retry", id, due, attempts, history]          transient: scheduled for a retry
#         ["dead", id, record]                           permanent or exhausted
#         ["return", id]                                 not sent (shutdown): back to the front
#         ["park", id, website, reason]                  auth failure: pause the website
# Delivering or dead-lettering a payment releases a refund deferred on it (RQ's dependents
# set), even one enqueued while the payment was in flight.
# An outcome only counts if the worker still holds the event's lease (ZREM removed it); if
# the lease ran out and another worker took the event over, that worker reports it instead.
ACK = """
local started_key, queue_key, scheduled_key, stats_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local dead_key, dead_index_key, deferred_key = KEYS[5], KEYS[6], KEYS[7]
local rate_key, paused_key = KEYS[8], KEYS[9]
local now, worker, window = ARGV[1], ARGV[2], tonumber(ARGV[3])
local done_prefix, job_prefix, parked_prefix = ARGV[4], ARGV[5], ARGV[6]
local outcomes = cjson.decode(ARGV[7])
local counts = {delivered = 0, api_duplicates = 0, retried = 0, dead_lettered = 0}
local suffix = ':' .. worker
local stale = 0
local function release(id)
  local dkey = job_prefix .. id .. ':dependents'
  if redis.call('EXISTS', dkey) == 0 then return end
  local deps = redis.call('SMEMBERS', dkey)
  for _, dep in ipairs(deps) do
    if redis.call('ZREM', deferred_key, dep) == 1 then
      redis.call('HSET', job_prefix .. dep, 'status', 'queued')
      redis.call('RPUSH', queue_key, dep)
    end
  end
  redis.call('DEL', dkey)
end
for _, o in ipairs(outcomes) do
  local kind, id = o[1], o[2]
  if redis.call('ZREM', started_key, id .. suffix) == 0 then
    stale = stale + 1
  elseif kind == 'ok' then
    redis.call('DEL', job_prefix .. id)
    if window > 0 then redis.call('SET', done_prefix .. id, '1', 'EX', window) end
    release(id)
    counts.delivered = counts.delivered + 1
    if o[3] == 1 then counts.api_duplicates = counts.api_duplicates + 1 end
  elseif kind == 'retry' then
    redis.call('HSET', job_prefix .. id, 'status', 'scheduled', 'attempts', o[4], 'history', o[5])
    redis.call('ZADD', scheduled_key, o[3], id)
    counts.retried = counts.retried + 1
  elseif kind == 'dead' then
    redis.call('HSET', dead_key, id, o[3])
    redis.call('ZADD', dead_index_key, now, id)
    redis.call('DEL', job_prefix .. id)
    release(id)
    counts.dead_lettered = counts.dead_lettered + 1
  elseif kind == 'return' then
    redis.call('HSET', job_prefix .. id, 'status', 'queued')
    redis.call('LPUSH', queue_key, id)
  elseif kind == 'park' then
    redis.call('HSET', job_prefix .. id, 'status', 'parked')
    redis.call('LPUSH', parked_prefix .. o[3], id)
    redis.call('HSETNX', paused_key, o[3], o[4])
  end
end
for field, n in pairs(counts) do
  if n > 0 then redis.call('HINCRBY', stats_key, field, n) end
end
if counts.delivered > 0 then
  redis.call('HINCRBY', rate_key, math.floor(tonumber(now)), counts.delivered)
end
return stale
"""
_ACK = Script(ACK)


class AckKind(StrEnum):
    """The first field of an ``ACK`` outcome: what happens to the event."""

    DELIVERED = "ok"
    RETRY = "retry"
    DEAD = "dead"
    RETURN = "return"
    PARK = "park"


@dataclass(frozen=True, slots=True)
class Delivered:
    """The API has the payment (``api_duplicate``: it already had it): forget the event."""

    job_id: str
    api_duplicate: bool = False
    kind: ClassVar[AckKind] = AckKind.DELIVERED

    def entry(self) -> list[Any]:
        return [self.kind, self.job_id, 1 if self.api_duplicate else 0]


@dataclass(frozen=True, slots=True)
class Retry:
    """A transient failure: try again at ``due`` (unix time)."""

    job_id: str
    due: float
    attempts: int
    history: list[dict[str, Any]]  # every attempt so far, oldest first
    kind: ClassVar[AckKind] = AckKind.RETRY

    def entry(self) -> list[Any]:
        return [self.kind, self.job_id, self.due, self.attempts, json.dumps(self.history)]


@dataclass(frozen=True, slots=True)
class Dead:
    """Refused for good, or out of attempts: into the dead-letter store as ``record``."""

    job_id: str
    record: dict[str, Any]  # deadletter.dead_record
    kind: ClassVar[AckKind] = AckKind.DEAD

    def entry(self) -> list[Any]:
        return [self.kind, self.job_id, json.dumps(self.record)]


@dataclass(frozen=True, slots=True)
class Return:
    """Not sent (the worker is stopping): back to the front of the queue."""

    job_id: str
    kind: ClassVar[AckKind] = AckKind.RETURN

    def entry(self) -> list[Any]:
        return [self.kind, self.job_id]


@dataclass(frozen=True, slots=True)
class Park:
    """The API refuses our credentials for ``website``: pause it, set the event aside."""

    job_id: str
    website: str
    reason: dict[str, Any]  # status, error, since: what the console shows for the pause
    kind: ClassVar[AckKind] = AckKind.PARK

    def entry(self) -> list[Any]:
        return [self.kind, self.job_id, self.website, json.dumps(self.reason)]


Acknowledgement = Delivered | Retry | Dead | Return | Park


async def ack(
    conn: redis.asyncio.Redis,
    keys: QueueKeys,
    batch: Iterable[Acknowledgement],
    *,
    now: float,
    worker: str,
    dedup_window: int,
) -> int:
    """Apply a batch of outcomes of ``worker``'s requests; returns how many were skipped
    because the worker no longer held the event's lease."""
    stale = await _ACK.run_async(
        conn,
        (
            keys.started,
            keys.queue,
            keys.scheduled,
            keys.stats,
            keys.dead,
            keys.dead_index,
            keys.deferred,
            keys.rate,
            keys.paused,
        ),
        (
            now,
            worker,
            dedup_window,
            keys.done_prefix,
            JOB_PREFIX,
            keys.parked_prefix,
            json.dumps([outcome.entry() for outcome in batch]),
        ),
    )
    return int(stale)


# -- RECLAIM -------------------------------------------------------------------------------------

# Put back every event whose lease ran out (its worker died or hung).
# KEYS: 1 rq:wip:{q}  2 rq:queue:{q}
# ARGV: 1 now (unix)  2 limit  3 job key prefix
# Returns how many events went back on the queue (at the front: they are the oldest).
RECLAIM = """
local started_key, queue_key = KEYS[1], KEYS[2]
local now, limit, job_prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local expired = redis.call('ZRANGEBYSCORE', started_key, '-inf', now, 'LIMIT', 0, limit)
local n = 0
for _, member in ipairs(expired) do
  redis.call('ZREM', started_key, member)
  local id = string.match(member, '^([^:]+)')
  if id and redis.call('EXISTS', job_prefix .. id) == 1 then
    redis.call('HSET', job_prefix .. id, 'status', 'queued')
    redis.call('LPUSH', queue_key, id)
    n = n + 1
  end
end
return n
"""
_RECLAIM = Script(RECLAIM)


async def reclaim(conn: redis.asyncio.Redis, keys: QueueKeys, *, now: float) -> int:
    """Put back on the queue the events whose lease expired before ``now``; how many."""
    returned = await _RECLAIM.run_async(
        conn, (keys.started, keys.queue), (now, _BATCH_LIMIT, JOB_PREFIX)
    )
    return int(returned)


# -- UNPAUSE -------------------------------------------------------------------------------------

# Lift an auth pause: the website's parked events go back on the queue, in order.
# KEYS: 1 ingest:{q}:parked:{website}  2 rq:queue:{q}  3 ingest:{q}:paused
# ARGV: 1 website  2 job key prefix
# Returns how many events were released.
UNPAUSE = """
local parked_key, queue_key, paused_key = KEYS[1], KEYS[2], KEYS[3]
local website, job_prefix = ARGV[1], ARGV[2]
local n = 0
while true do
  local ids = redis.call('LPOP', parked_key, 1000)
  if not ids then break end
  for _, id in ipairs(ids) do
    redis.call('HSET', job_prefix .. id, 'status', 'queued')
  end
  redis.call('RPUSH', queue_key, unpack(ids))
  n = n + #ids
end
redis.call('HDEL', paused_key, website)
return n
"""
_UNPAUSE = Script(UNPAUSE)


async def unpause(conn: redis.asyncio.Redis, keys: QueueKeys, website: str) -> int:
    """Lift ``website``'s auth pause; returns how many parked events went back."""
    released = await _UNPAUSE.run_async(
        conn, (keys.parked(website), keys.queue, keys.paused), (website, JOB_PREFIX)
    )
    return int(released)


# -- REPLAY --------------------------------------------------------------------------------------

# Move dead letters back onto the queue as fresh events (attempts reset).
# KEYS: 1 ingest:{q}:dead  2 ingest:{q}:dead:index  3 rq:queue:{q}  4 ingest:{q}:stats
#       5 rq:queues
# ARGV: 1 job key prefix  2 now (ISO)  3 queue name  4.. ids
# Returns the ids actually requeued (an id already replayed by someone else is skipped).
REPLAY = """
local dead_key, dead_index_key, queue_key, stats_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local queues_key = KEYS[5]
local job_prefix, now_iso, queue_name, first_id = ARGV[1], ARGV[2], ARGV[3], 4
local done = {}
for i = first_id, #ARGV do
  local id = ARGV[i]
  local raw = redis.call('HGET', dead_key, id)
  if raw then
    local rec = cjson.decode(raw)
    redis.call('HSET', job_prefix .. id, 'data', rec['data'],
      'created_at', rec['created_at'] or now_iso, 'enqueued_at', now_iso,
      'origin', queue_name, 'status', 'queued',
      'description', rec['description'] or '', 'result_ttl', '0', 'timeout', '60',
      'website', rec['website'] or '-', 'attempts', '0', 'history', rec['history_json'] or '')
    redis.call('RPUSH', queue_key, id)
    redis.call('HDEL', dead_key, id)
    redis.call('ZREM', dead_index_key, id)
    done[#done + 1] = id
  end
end
if #done > 0 then
  redis.call('HINCRBY', stats_key, 'replayed', #done)
  redis.call('SADD', queues_key, queue_key)
end
return done
"""
_REPLAY = Script(REPLAY)


def replay(conn: redis.Redis, keys: QueueKeys, ids: Sequence[str], *, now: datetime) -> list[str]:
    """Requeue these dead letters as if enqueued at ``now``; returns the ids requeued."""
    done = _REPLAY.run(
        conn,
        (keys.dead, keys.dead_index, keys.queue, keys.stats, RQ_QUEUES),
        (JOB_PREFIX, utc_iso(now, timespec=RQ_TIMESPEC), keys.name, *ids),
    )
    return [d.decode() if isinstance(d, bytes) else str(d) for d in done]


# -- PURGE ---------------------------------------------------------------------------------------

# Delete dead letters for good (an operator's explicit decision, counted as purged).
# KEYS: 1 ingest:{q}:dead  2 ingest:{q}:dead:index  3 ingest:{q}:stats
# ARGV: ids
PURGE = """
local dead_key, dead_index_key, stats_key = KEYS[1], KEYS[2], KEYS[3]
local ids = ARGV
local n = 0
for _, id in ipairs(ids) do
  if redis.call('HDEL', dead_key, id) == 1 then
    redis.call('ZREM', dead_index_key, id)
    n = n + 1
  end
end
if n > 0 then redis.call('HINCRBY', stats_key, 'purged', n) end
return n
"""
_PURGE = Script(PURGE)


def purge(conn: redis.Redis, keys: QueueKeys, ids: Sequence[str]) -> int:
    """Delete these dead letters; returns how many there were."""
    return int(_PURGE.run(conn, (keys.dead, keys.dead_index, keys.stats), ids))


# -- ERASE ---------------------------------------------------------------------------------------

# Erase one event wherever it waits (an erasure request: it must never be sent again).
# KEYS: 1 rq:queue:{q}  2 rq:scheduled:{q}  3 rq:deferred:{q}  4 ingest:{q}:dead
#       5 ingest:{q}:dead:index  6 ingest:{q}:stats
# ARGV: 1 job key prefix  2 parked key prefix  3 id
# Returns where it was ("queued", "scheduled", "deferred", "parked", "dead"), "in_flight" if
# a worker is sending it right now (not recalled), or false if it was not there.
ERASE = """
local queue_key, scheduled_key, deferred_key = KEYS[1], KEYS[2], KEYS[3]
local dead_key, dead_index_key, stats_key = KEYS[4], KEYS[5], KEYS[6]
local job_prefix, parked_prefix, id = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HDEL', dead_key, id) == 1 then
  redis.call('ZREM', dead_index_key, id)
  redis.call('HINCRBY', stats_key, 'erased', 1)
  return 'dead'
end
local key = job_prefix .. id
local f = redis.call('HMGET', key, 'status', 'website')
local status = f[1]
if not status then return false end
if status == 'started' then return 'in_flight' end
redis.call('LREM', queue_key, 0, id)
redis.call('ZREM', scheduled_key, id)
redis.call('ZREM', deferred_key, id)
redis.call('LREM', parked_prefix .. (f[2] or '-'), 0, id)
redis.call('DEL', key)
redis.call('HINCRBY', stats_key, 'erased', 1)
return status
"""
_ERASE = Script(ERASE)


def erase(conn: redis.Redis, keys: QueueKeys, job_id: str) -> str | None:
    """Erase one event; where it was (see ``ERASE``), or None if it was nowhere."""
    where = _ERASE.run(
        conn,
        (keys.queue, keys.scheduled, keys.deferred, keys.dead, keys.dead_index, keys.stats),
        (JOB_PREFIX, keys.parked_prefix, job_id),
    )
    return text(where) if where else None
