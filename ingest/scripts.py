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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, NamedTuple

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from .jobs import Claimed
from .keys import (
    DEAD_IN,
    JOB_PREFIX,
    LEASE_SCORE_OFFSET,
    MINUTE_TTL,
    RQ_QUEUES,
    QueueKeys,
    job_key,
    minute_of,
    send_rate,
    text,
)
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


# -- refunds deferred on a payment ----------------------------------------------------------------


def _lua_string(value: str) -> str:
    # Key names are ASCII, for which a JSON string literal is also a Lua one.
    return json.dumps(value)


def _queue_key_function(lua_name: str, attribute: str) -> str:
    """A Lua function giving one of :class:`QueueKeys`' keys for any queue name, so a script
    can reach another queue's keys while the names stay defined in :mod:`ingest.keys`."""
    prefix, _, suffix = getattr(QueueKeys("\0"), attribute).partition("\0")
    return (
        f"local function {lua_name}(q) return {_lua_string(prefix)} .. q .. "
        f"{_lua_string(suffix)} end\n"
    )


# The dead-letter reasons of a refund whose payment left unsent.
PAYMENT_PURGED = "payment_purged"
PAYMENT_ERASED = "payment_erased"

# A refund deferred on a payment waits in its own queue's deferred registry (the job's
# ``origin``): a refund may be enqueued in another queue than its payment, while job hashes
# and dependents sets are shared by all queues. When the payment is delivered the refund is
# queued; when the payment leaves for good unsent (an operator's purge, an erasure) the refund
# is dead-lettered with that reason, never sent without its payment; while the payment is
# dead the refund stays deferred, waiting for an operator's replay or purge.
DEPENDENTS = (
    f"local DEPENDENTS_JOB_PREFIX = {_lua_string(JOB_PREFIX)}\n"
    f"local DEAD_IN = {_lua_string(DEAD_IN)}\n"
    f"local PAYMENT_PURGED = {_lua_string(PAYMENT_PURGED)}\n"
    f"local PAYMENT_ERASED = {_lua_string(PAYMENT_ERASED)}\n"
    + _queue_key_function("queue_key_of", "queue")
    + _queue_key_function("deferred_key_of", "deferred")
    + _queue_key_function("dead_key_of", "dead")
    + _queue_key_function("dead_index_key_of", "dead_index")
    + _queue_key_function("stats_key_of", "stats")
    + """
local function each_deferred_dependent(id, fn)
  local dkey = DEPENDENTS_JOB_PREFIX .. id .. ':dependents'
  for _, dep in ipairs(redis.call('SMEMBERS', dkey)) do
    local origin = redis.call('HGET', DEPENDENTS_JOB_PREFIX .. dep, 'origin')
    if origin and redis.call('ZREM', deferred_key_of(origin), dep) == 1 then
      fn(dep, origin)
    end
  end
  redis.call('DEL', dkey)
end
local function release_dependents(id)
  each_deferred_dependent(id, function(dep, origin)
    redis.call('HSET', DEPENDENTS_JOB_PREFIX .. dep, 'status', 'queued')
    redis.call('RPUSH', queue_key_of(origin), dep)
  end)
end
local function transaction_of(data)
  local ok, call = pcall(cjson.decode, data)
  if not ok or type(call) ~= 'table' or type(call[3]) ~= 'table' then return '' end
  local ok_body, body = pcall(cjson.decode, call[3][1])
  if not ok_body or type(body) ~= 'table' then return '' end
  return body['transaction_id'] or ''
end
local function dead_letter_dependents(id, reason, message, now, now_iso)
  each_deferred_dependent(id, function(dep, origin)
    local key = DEPENDENTS_JOB_PREFIX .. dep
    local f = redis.call('HMGET', key, 'data', 'website')
    local record = cjson.encode({job_id = dep, transaction_id = transaction_of(f[1]),
      website = f[2] or '-', data = f[1], reason = reason, error = message, attempts = 0,
      first_attempt_at = '', last_attempt_at = '', dead_at = now_iso})
    redis.call('HSET', dead_key_of(origin), dep, record)
    redis.call('HSET', DEAD_IN, dep, origin)
    redis.call('ZADD', dead_index_key_of(origin), now, dep)
    redis.call('DEL', key)
    redis.call('HINCRBY', stats_key_of(origin), 'dead_lettered', 1)
  end)
end
"""
)


# -- ENQUEUE -------------------------------------------------------------------------------------

# Enqueue one event, or report it as a duplicate.
# KEYS: 1 rq:job:{id}  2 rq:queue:{q}  3 ingest:{q}:stats  4 ingest:{q}:done:{id}
#       5 ingest:{q}:dead  6 rq:job:{payment id}  7 rq:deferred:{q}
#       8 ingest:dead-in
#       (and rq:job:{payment id}:dependents, derived from KEYS[6], for a deferred refund)
# ARGV: 1 id  2 data  3 now (ISO)  4 queue name  5 website  6 description  7 "1" if refund
#       8 now (unix)
# Returns 1 queued, 2 deferred (a refund waiting for its payment), 0 duplicate.
# This is the checkout's hot path: every argument costs latency, so the queue is entered in
# RQ's ``rq:queues`` set by the worker at start and by REPLAY, not on every enqueue.
# A refund whose payment is still in the system (queued, in flight, scheduled for retry,
# parked) or dead-lettered in any queue (``ingest:dead-in``) waits in RQ's deferred registry
# (see ``DEPENDENTS``): it is queued once that payment is delivered. A refund's job hash names
# its payment (``payment_id``).
ENQUEUE = """
local job_key, queue_key, stats_key, done_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local dead_key, payment_key, deferred_key, dead_in_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local id, data, now_iso, queue_name = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local website, description, is_refund, now = ARGV[5], ARGV[6], ARGV[7] == '1', ARGV[8]
if redis.call('EXISTS', job_key) == 1 or redis.call('EXISTS', done_key) == 1
   or redis.call('HEXISTS', dead_key, id) == 1 then
  redis.call('HINCRBY', stats_key, 'duplicates', 1)
  return 0
end
local status = 'queued'
local payment_id = is_refund and string.match(payment_key, '([^:]+)$')
if is_refund and (redis.call('EXISTS', payment_key) == 1
    or redis.call('HEXISTS', dead_in_key, payment_id) == 1
    or redis.call('HEXISTS', dead_key, payment_id) == 1) then
  status = 'deferred'
end
redis.call('HSET', job_key, 'data', data, 'created_at', now_iso, 'enqueued_at', now_iso,
  'origin', queue_name, 'status', status, 'description', description, 'result_ttl', '0',
  'timeout', '60', 'website', website, 'attempts', '0')
redis.call('HINCRBY', stats_key, 'enqueued', 1)
if is_refund then
  redis.call('HSET', job_key, 'payment_id', payment_id)
end
if status == 'deferred' then
  redis.call('SADD', payment_key .. ':dependents', id)
  redis.call('ZADD', deferred_key, now, id)
  return 2
end
redis.call('RPUSH', queue_key, id)
return 1
"""


class EnqueueEvent(NamedTuple):
    """One event's own part of an ``ENQUEUE`` call: what :meth:`Enqueue.arguments` and
    :meth:`Enqueue.packed_event` both take."""

    job_id: str
    data: str
    website: str
    description: str
    refund: bool
    payment_job_id: str
    """The payment's own job id: the event's, unless it is a refund."""
    now: datetime


class Enqueue:
    """``ENQUEUE`` for one queue, on the checkout's hot path.

    Everything goes to redis-py as bytes, the queue's own keys encoded once here: redis-py
    then packs the command without encoding each argument again (measurable per checkout).
    :meth:`arguments` builds one event's keys and arguments from an :class:`EnqueueEvent`;
    :meth:`run`, :meth:`run_async` and :meth:`add_to` (a pipeline) send them. Each returns
    (or the pipeline answers) 1 queued, 2 deferred, 0 duplicate.
    """

    script = Script(ENQUEUE)

    def __init__(self, keys: QueueKeys) -> None:
        self._keys = keys
        self._queue = keys.queue.encode()
        self._stats = keys.stats.encode()
        self._dead = keys.dead.encode()
        self._deferred = keys.deferred.encode()
        self._dead_in = DEAD_IN.encode()
        self._name = keys.name.encode()
        sha = self.script.sha.encode()
        self._sha = b"$%d\r\n%s\r\n" % (len(sha), sha)
        # The packed command as one %-template: the constant keys and arguments in place
        # (a '%' in a queue name escaped), the event's own as ``$<length>\r\n<bytes>``.
        job_prefix, done_prefix = JOB_PREFIX.encode(), keys.done_prefix.encode()
        self._job_prefix_len, self._done_prefix_len = len(job_prefix), len(done_prefix)
        self._template = b"".join(
            part if isinstance(part, bytes) else _bulk(part[0]).replace(b"%", b"%%")
            for part in (
                b"*19\r\n$7\r\nEVALSHA\r\n",
                (sha,),
                b"$1\r\n8\r\n",
                b"$%d\r\n" + job_prefix.replace(b"%", b"%%") + b"%s\r\n",  # 1 job key
                (self._queue,),
                (self._stats,),
                b"$%d\r\n" + done_prefix.replace(b"%", b"%%") + b"%s\r\n",  # 4 done key
                (self._dead,),
                b"$%d\r\n" + job_prefix.replace(b"%", b"%%") + b"%s\r\n",  # 6 payment job key
                (self._deferred,),
                (self._dead_in,),
                b"$%d\r\n%s\r\n" * 3,  # ARGV 1-3: id, data, now (ISO)
                (self._name,),
                b"$%d\r\n%s\r\n" * 2,  # ARGV 5, 6: website, description
                b"$1\r\n%s\r\n$%d\r\n%s\r\n",  # ARGV 7, 8: refund flag, now (unix)
            )
        )

    def arguments(self, event: EnqueueEvent) -> tuple[list[bytes], list[bytes]]:
        job_id = event.job_id
        keys = [
            job_key(job_id).encode(),
            self._queue,
            self._stats,
            self._keys.done(job_id).encode(),
            self._dead,
            job_key(event.payment_job_id).encode(),
            self._deferred,
            self._dead_in,
        ]
        args = [
            job_id.encode(),
            event.data.encode(),
            utc_iso(event.now, timespec=RQ_TIMESPEC).encode(),
            self._name,
            event.website.encode(),
            event.description.encode(),
            b"1" if event.refund else b"0",
            repr(event.now.timestamp()).encode(),
        ]
        return keys, args

    def packed_event(self, event: EnqueueEvent) -> bytes:
        """``packed(arguments(event))`` in one step, the constant keys and arguments spliced
        in already packed: the checkout's path (tests/test_producer.py holds the two equal)."""
        job = event.job_id.encode()
        payment_job = event.payment_job_id.encode()
        data_bytes = event.data.encode()
        iso = utc_iso(event.now, timespec=RQ_TIMESPEC).encode()
        site = event.website.encode()
        text = event.description.encode()
        unix = repr(event.now.timestamp()).encode()
        return self._template % (
            self._job_prefix_len + len(job),
            job,
            self._done_prefix_len + len(job),
            job,
            self._job_prefix_len + len(payment_job),
            payment_job,
            len(job),
            job,
            len(data_bytes),
            data_bytes,
            len(iso),
            iso,
            len(site),
            site,
            len(text),
            text,
            b"1" if event.refund else b"0",
            len(unix),
            unix,
        )

    def run_packed(self, conn: redis.Redis, packed: bytes) -> int:
        """Send a :meth:`packed_event` on a pooled connection (see :meth:`run`)."""
        try:
            return int(_send_packed(conn, packed))
        except NoScriptError:
            conn.script_load(self.script.source)
            return int(_send_packed(conn, packed))

    def run(self, conn: redis.Redis, call: tuple[list[bytes], list[bytes]]) -> int:
        """Send ``EVALSHA`` as one pre-packed write on a pooled connection.

        redis-py would pack the ~18 arguments again, one ``encode`` and ``isinstance`` chain
        each, and record each command for its observability hooks: a quarter of an
        enqueue's CPU. The reply, errors and NOSCRIPT fallback are the same; a connection
        that fails mid-call is dropped, as redis-py drops it.
        """
        if conn.connection is not None:  # a single-connection client: no pool to borrow from
            return int(self.script.run(conn, *call))
        return self.run_packed(conn, self.packed(call))

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


def lease_score(lease_until: float) -> float:
    """A lease's score in RQ's started registry: its expiry past RQ's cleanup's reach."""
    return lease_until + LEASE_SCORE_OFFSET


async def renew(
    conn: redis.asyncio.Redis,
    keys: QueueKeys,
    job_ids: Iterable[str],
    *,
    worker: str,
    lease_until: float,
) -> None:
    """Extend ``worker``'s leases on these events to ``lease_until``; a lease already gone
    (expired and reclaimed, or acknowledged) is not recreated."""
    score = lease_score(lease_until)
    members = {f"{job_id}:{worker}": score for job_id in job_ids}
    if members:
        await conn.zadd(keys.started, members, xx=True)


def _bulk(item: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(item), item)


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
# ARGV: 1 now (unix)  2 lease score (expiry + LEASE_SCORE_OFFSET)  3 worker name  4 N
#       5 job key prefix  6 parked key prefix  7 promotion limit  8 now (RQ's ISO format)
# Returns a flat array: id, data, website, attempts, history ... per event.
# Each claimed event is in RQ's started registry as "{id}:{worker}" scored by its lease
# expiry plus LEASE_SCORE_OFFSET (out of reach of RQ's own cleanup, see keys.py); if the
# worker dies the lease runs out and RECLAIM puts the event back. ``started_at`` is in RQ's
# format (rq.utils.utcformat), so that RQ's tools can load the job.
# Events of a website paused for an auth failure are moved aside to its parked list.
CLAIM = """
local queue_key, started_key, scheduled_key, paused_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, lease_until, worker, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local job_prefix, parked_prefix, promote_limit = ARGV[5], ARGV[6], tonumber(ARGV[7])
local now_iso = ARGV[8]
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
      redis.call('HSET', key, 'status', 'started', 'started_at', now_iso)
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
        (
            now,
            lease_score(lease_until),
            worker,
            limit,
            JOB_PREFIX,
            keys.parked_prefix,
            _BATCH_LIMIT,
            utc_iso(now, timespec=RQ_TIMESPEC),
        ),
    )
    return [
        Claimed.from_fields(*rows[i : i + _CLAIM_FIELDS])
        for i in range(0, len(rows), _CLAIM_FIELDS)
    ]


# -- ACK -----------------------------------------------------------------------------------------

# Record the outcome of a batch of finished requests.
# KEYS: 1 rq:wip:{q}  2 rq:queue:{q}  3 rq:scheduled:{q}  4 ingest:{q}:stats
#       5 ingest:{q}:dead  6 ingest:{q}:dead:index  7 rq:deferred:{q}  8 ingest:{q}:rate
#       9 ingest:{q}:paused  10 ingest:{q}:minute:{m} (the minute of ``now``)
# ARGV: 1 now (unix)  2 worker name  3 dedup window (s)  4 done key prefix  5 job key prefix
#       6 parked key prefix  7 JSON array of outcomes (below)  8 queue name; an outcome is
#         ["ok", id, api_duplicate]                      delivered
#         ["retry", id, due, attempts, history]          transient: scheduled for a retry
#         ["dead", id, record]                           permanent or exhausted
#         ["return", id]                                 not sent (shutdown): back to the front
#         ["park", id, website, reason]                  auth failure: pause the website
#       9 the minute key's expiry (s)
# Delivering a payment releases a refund deferred on it (RQ's dependents set), even one
# enqueued while the payment was in flight, into the refund's own queue. Dead-lettering it
# does not: the refund stays deferred until the payment is replayed and delivered, or purged.
# An outcome only counts if the worker still holds the event's lease (ZREM removed it); if
# the lease ran out and another worker took the event over, that worker reports it instead.
# The batch's deliveries and dead letters are added to its minute for the console's charts:
# one HINCRBY per kind per batch, and an EXPIRE only by the write that creates a field (so
# at most once per field per minute; every write that can create the key creates a field).
ACK = """
local started_key, queue_key, scheduled_key, stats_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local dead_key, dead_index_key, deferred_key = KEYS[5], KEYS[6], KEYS[7]
local rate_key, paused_key = KEYS[8], KEYS[9]
local minute_key, minute_ttl = KEYS[10], ARGV[9]
local now, worker, window = ARGV[1], ARGV[2], tonumber(ARGV[3])
local done_prefix, job_prefix, parked_prefix = ARGV[4], ARGV[5], ARGV[6]
local outcomes = cjson.decode(ARGV[7])
local queue_name = ARGV[8]
local counts = {delivered = 0, api_duplicates = 0, retried = 0, dead_lettered = 0}
local suffix = ':' .. worker
local stale = 0
for _, o in ipairs(outcomes) do
  local kind, id = o[1], o[2]
  if redis.call('ZREM', started_key, id .. suffix) == 0 then
    stale = stale + 1
  elseif kind == 'ok' then
    redis.call('DEL', job_prefix .. id)
    if window > 0 then redis.call('SET', done_prefix .. id, '1', 'EX', window) end
    release_dependents(id)
    counts.delivered = counts.delivered + 1
    if o[3] == 1 then counts.api_duplicates = counts.api_duplicates + 1 end
  elseif kind == 'retry' then
    redis.call('HSET', job_prefix .. id, 'status', 'scheduled', 'attempts', o[4], 'history', o[5])
    redis.call('ZADD', scheduled_key, o[3], id)
    counts.retried = counts.retried + 1
  elseif kind == 'dead' then
    redis.call('HSET', dead_key, id, o[3])
    redis.call('HSET', DEAD_IN, id, queue_name)
    redis.call('ZADD', dead_index_key, now, id)
    redis.call('DEL', job_prefix .. id)
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
for _, field in ipairs({'delivered', 'dead_lettered'}) do
  local n = counts[field]
  if n > 0 and redis.call('HINCRBY', minute_key, field, n) == n then
    redis.call('EXPIRE', minute_key, minute_ttl)
  end
end
return stale
"""
_ACK = Script(DEPENDENTS + ACK)


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
            keys.minute(minute_of(now)),
        ),
        (
            now,
            worker,
            dedup_window,
            keys.done_prefix,
            JOB_PREFIX,
            keys.parked_prefix,
            json.dumps([outcome.entry() for outcome in batch]),
            keys.name,
            MINUTE_TTL,
        ),
    )
    return int(stale)


# -- RECLAIM -------------------------------------------------------------------------------------

# Put back every event whose lease ran out (its worker died or hung), then sample the queue.
# KEYS: 1 rq:wip:{q}  2 rq:queue:{q}  3 ingest:{q}:minute:{m} (the minute of ``now``)
# ARGV: 1 now (unix)  2 limit  3 job key prefix  4 the minute key's expiry (s)
#       5 LEASE_SCORE_OFFSET
# Returns how many events went back on the queue (at the front: they are the oldest).
# Our leases are scored from LEASE_SCORE_OFFSET up; an entry scored below it that has
# expired (a lease written before the offset existed) goes back to the queue too, before
# RQ's cleanup would move it to rq:failed.
# Every worker runs this in its housekeeping (every lease/4 s), which makes it the sampler of
# the console's gauge charts: the queue's length and its head's age (from RQ's
# ``enqueued_at``, %Y-%m-%dT%H:%M:%S.%fZ in UTC) are kept in the minute's hash if larger
# than what an earlier sample of that minute (by any worker) left there.
RECLAIM = """
local started_key, queue_key = KEYS[1], KEYS[2]
local now, limit, job_prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local minute_key, minute_ttl = KEYS[3], ARGV[4]
local offset = tonumber(ARGV[5])
local expired = redis.call('ZRANGEBYSCORE', started_key, offset, offset + now, 'LIMIT', 0, limit)
local older = redis.call('ZRANGEBYSCORE', started_key, '-inf', now, 'LIMIT', 0, limit)
for _, member in ipairs(older) do expired[#expired + 1] = member end
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
local function unix_time(rq_time)  -- days from the civil date (H. Hinnant), no os.time here
  local y, mo, d, h, mi, s = string.match(rq_time, '^(%d+)-(%d+)-(%d+)T(%d+):(%d+):([%d.]+)')
  if not y then return nil end
  y, mo = tonumber(y) - (tonumber(mo) <= 2 and 1 or 0), tonumber(mo)
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((mo + 9) % 12) + 2) / 5) + tonumber(d) - 1
  local days = era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return (days - 719468) * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s)
end
local depth, age = redis.call('LLEN', queue_key), 0
local head = redis.call('LINDEX', queue_key, 0)
local enqueued = head and redis.call('HGET', job_prefix .. head, 'enqueued_at')
local since = enqueued and unix_time(enqueued)
if since then age = math.max(0, tonumber(now) - since) end
local seen = redis.call('HMGET', minute_key, 'depth', 'oldest_age')
for i, sample in ipairs({{'depth', depth, '%d'}, {'oldest_age', age, '%.1f'}}) do
  local was = tonumber(seen[i])  -- nil if absent (or not a number: overwritten)
  if not was or sample[2] > was then
    if redis.call('HSET', minute_key, sample[1], string.format(sample[3], sample[2])) == 1 then
      redis.call('EXPIRE', minute_key, minute_ttl)
    end
  end
end
return n
"""
_RECLAIM = Script(RECLAIM)


async def reclaim(conn: redis.asyncio.Redis, keys: QueueKeys, *, now: float) -> int:
    """Put back on the queue the events whose lease expired before ``now``; how many."""
    returned = await _RECLAIM.run_async(
        conn,
        (keys.started, keys.queue, keys.minute(minute_of(now))),
        (now, _BATCH_LIMIT, JOB_PREFIX, MINUTE_TTL, LEASE_SCORE_OFFSET),
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
#       5 rq:queues  6 rq:deferred:{q}
# ARGV: 1 job key prefix  2 now (ISO)  3 queue name  4 now (unix)
#       5.. pairs: id, the id of the payment it refunds ('' for a payment)
# Returns the ids actually requeued (an id already replayed by someone else is skipped).
# A replayed refund whose payment is in the system or dead waits for it, deferred, as at
# enqueue; a replayed payment's deferred refunds keep waiting on it (its dependents set).
REPLAY = """
local dead_key, dead_index_key, queue_key, stats_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local queues_key, deferred_key = KEYS[5], KEYS[6]
local job_prefix, now_iso, queue_name, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local done = {}
for i = 5, #ARGV, 2 do
  local id, payment_id = ARGV[i], ARGV[i + 1]
  local raw = redis.call('HGET', dead_key, id)
  if raw then
    local rec = cjson.decode(raw)
    local status = 'queued'
    local payment_key = job_prefix .. payment_id
    redis.call('HDEL', DEAD_IN, id)
    if payment_id ~= '' and (redis.call('EXISTS', payment_key) == 1
        or redis.call('HEXISTS', DEAD_IN, payment_id) == 1
        or redis.call('HEXISTS', dead_key, payment_id) == 1) then
      status = 'deferred'
    end
    redis.call('HSET', job_prefix .. id, 'data', rec['data'],
      'created_at', rec['created_at'] or now_iso, 'enqueued_at', now_iso,
      'origin', queue_name, 'status', status,
      'description', rec['description'] or '', 'result_ttl', '0', 'timeout', '60',
      'website', rec['website'] or '-', 'attempts', '0', 'history', rec['history_json'] or '')
    if payment_id ~= '' then
      redis.call('HSET', job_prefix .. id, 'payment_id', payment_id)
    end
    if status == 'deferred' then
      redis.call('SADD', payment_key .. ':dependents', id)
      redis.call('ZADD', deferred_key, now, id)
    else
      redis.call('RPUSH', queue_key, id)
    end
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
_REPLAY = Script(DEPENDENTS + REPLAY)


def replay(
    conn: redis.Redis,
    keys: QueueKeys,
    ids: Sequence[str],
    *,
    now: datetime,
    payments: Mapping[str, str] | None = None,
) -> list[str]:
    """Requeue these dead letters as if enqueued at ``now``; returns the ids requeued.

    ``payments`` maps a refund's id to the id of its payment, so that the refund waits for a
    payment still in the system or dead (it is deferred, not queued).
    """
    payments = payments or {}
    pairs = [part for job_id in ids for part in (job_id, payments.get(job_id, ""))]
    done = _REPLAY.run(
        conn,
        (keys.dead, keys.dead_index, keys.queue, keys.stats, RQ_QUEUES, keys.deferred),
        (JOB_PREFIX, utc_iso(now, timespec=RQ_TIMESPEC), keys.name, repr(now.timestamp()), *pairs),
    )
    return [d.decode() if isinstance(d, bytes) else str(d) for d in done]


# -- PURGE ---------------------------------------------------------------------------------------

# Delete dead letters for good (an operator's explicit decision, counted as purged).
# KEYS: 1 ingest:{q}:dead  2 ingest:{q}:dead:index  3 ingest:{q}:stats
# ARGV: 1 now (unix)  2 now (ISO)  3.. ids
# A refund deferred on a purged payment is dead-lettered (reason ``payment_purged``), in its
# own queue: sending a refund of a payment the API never recorded would post revenue that
# never was, so a person decides (replay sends it anyway, purge drops it).
PURGE = """
local dead_key, dead_index_key, stats_key = KEYS[1], KEYS[2], KEYS[3]
local now, now_iso = ARGV[1], ARGV[2]
local n = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('HDEL', dead_key, id) == 1 then
    redis.call('ZREM', dead_index_key, id)
    redis.call('HDEL', DEAD_IN, id)
    dead_letter_dependents(id, PAYMENT_PURGED,
      'its payment was purged from the dead letters unsent', now, now_iso)
    n = n + 1
  end
end
if n > 0 then redis.call('HINCRBY', stats_key, 'purged', n) end
return n
"""
_PURGE = Script(DEPENDENTS + PURGE)


def purge(conn: redis.Redis, keys: QueueKeys, ids: Sequence[str], *, now: datetime) -> int:
    """Delete these dead letters; returns how many there were. Refunds deferred on a purged
    payment become dead letters themselves (``payment_purged``), dated ``now``."""
    return int(
        _PURGE.run(
            conn,
            (keys.dead, keys.dead_index, keys.stats),
            (repr(now.timestamp()), utc_iso(now), *ids),
        )
    )


# -- ERASE ---------------------------------------------------------------------------------------

# Erase one event wherever it waits (an erasure request: it must never be sent again).
# KEYS: 1 rq:queue:{q}  2 rq:scheduled:{q}  3 rq:deferred:{q}  4 ingest:{q}:dead
#       5 ingest:{q}:dead:index  6 ingest:{q}:stats
# ARGV: 1 job key prefix  2 parked key prefix  3 id  4 now (unix)  5 now (ISO)
# Returns where it was ("queued", "scheduled", "deferred", "parked", "dead"), "in_flight" if
# a worker is sending it right now (not recalled), or false if it was not there.
# Refunds deferred on an erased payment are dead-lettered (``payment_erased``): their payment
# will never be sent, and a refund matched by the erasure itself is erased as any event. An
# erased refund leaves its payment's dependents set, so nothing waits on a gone event.
ERASE = """
local queue_key, scheduled_key, deferred_key = KEYS[1], KEYS[2], KEYS[3]
local dead_key, dead_index_key, stats_key = KEYS[4], KEYS[5], KEYS[6]
local job_prefix, parked_prefix, id, now, now_iso = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local reason, message = PAYMENT_ERASED, 'its payment was erased unsent'
if redis.call('HDEL', dead_key, id) == 1 then
  redis.call('ZREM', dead_index_key, id)
  redis.call('HDEL', DEAD_IN, id)
  redis.call('HINCRBY', stats_key, 'erased', 1)
  dead_letter_dependents(id, reason, message, now, now_iso)
  return 'dead'
end
local key = job_prefix .. id
local f = redis.call('HMGET', key, 'status', 'website', 'payment_id')
local status = f[1]
if not status then return false end
if status == 'started' then return 'in_flight' end
redis.call('LREM', queue_key, 0, id)
redis.call('ZREM', scheduled_key, id)
redis.call('ZREM', deferred_key, id)
redis.call('LREM', parked_prefix .. (f[2] or '-'), 0, id)
redis.call('DEL', key)
if f[3] then redis.call('SREM', job_prefix .. f[3] .. ':dependents', id) end
redis.call('HINCRBY', stats_key, 'erased', 1)
dead_letter_dependents(id, reason, message, now, now_iso)
return status
"""
_ERASE = Script(DEPENDENTS + ERASE)


def erase(conn: redis.Redis, keys: QueueKeys, job_id: str, *, now: datetime) -> str | None:
    """Erase one event; where it was (see ``ERASE``), or None if it was nowhere."""
    where = _ERASE.run(
        conn,
        (keys.queue, keys.scheduled, keys.deferred, keys.dead, keys.dead_index, keys.stats),
        (JOB_PREFIX, keys.parked_prefix, job_id, repr(now.timestamp()), utc_iso(now)),
    )
    return text(where) if where else None


# -- WAITING -------------------------------------------------------------------------------------

# Why the deferred refunds of one queue wait: for a payment still on its way, or for a person.
# KEYS: 1 rq:deferred:{q}  2 ingest:dead-in
# ARGV: 1 job key prefix  2 at most this many are looked at
# Returns {deferred, on_dead, on_parked, orphaned, looked_at}: on_dead wait for a payment in
# the dead letters (an operator's replay or purge), on_parked for a payment of a website paused
# by an auth failure; orphaned wait for a payment that is nowhere (must be 0).
WAITING = """
local deferred_key, dead_in_key = KEYS[1], KEYS[2]
local job_prefix, limit = ARGV[1], tonumber(ARGV[2])
local on_dead, on_parked, orphaned = 0, 0, 0
local ids = redis.call('ZRANGE', deferred_key, 0, limit - 1)
for _, id in ipairs(ids) do
  local payment_id = redis.call('HGET', job_prefix .. id, 'payment_id')
  if payment_id then
    local payment_key = job_prefix .. payment_id
    local status = redis.call('HGET', payment_key, 'status')
    if status == 'parked' then
      on_parked = on_parked + 1
    elseif not status then
      -- Dead in any queue; or (dead before ingest:dead-in existed) its dependents set,
      -- which outlives a dead payment's job hash.
      if redis.call('HEXISTS', dead_in_key, payment_id) == 1
          or redis.call('SISMEMBER', payment_key .. ':dependents', id) == 1 then
        on_dead = on_dead + 1
      else
        orphaned = orphaned + 1
      end
    end
  end
end
return {redis.call('ZCARD', deferred_key), on_dead, on_parked, orphaned, #ids}
"""
_WAITING = Script(WAITING)
_WAITING_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Waiting:
    """Why a queue's deferred refunds wait (see ``WAITING``)."""

    deferred: int
    on_dead: int  # payment in the dead letters: waits for an operator's replay or purge
    on_parked: int  # payment of a website paused by an auth failure
    orphaned: int  # payment nowhere: a bug, must be 0
    complete: bool  # every deferred refund was looked at

    @property
    def blocked(self) -> int:
        """Refunds that only a person can move on (dead or paused payment)."""
        return self.on_dead + self.on_parked

    @classmethod
    def from_reply(cls, reply: Sequence[Any]) -> Waiting:
        deferred, on_dead, on_parked, orphaned, looked_at = (int(n) for n in reply)
        return cls(deferred, on_dead, on_parked, orphaned, looked_at == deferred)


def waiting(conn: redis.Redis, keys: QueueKeys) -> Waiting:
    """Why ``keys``' deferred refunds wait."""
    return Waiting.from_reply(
        _WAITING.run(conn, (keys.deferred, DEAD_IN), (JOB_PREFIX, _WAITING_LIMIT))
    )


async def waiting_async(conn: redis.asyncio.Redis, keys: QueueKeys) -> Waiting:
    """:func:`waiting` on an asyncio connection (the worker's)."""
    reply = await _WAITING.run_async(conn, (keys.deferred, DEAD_IN), (JOB_PREFIX, _WAITING_LIMIT))
    return Waiting.from_reply(reply)


# -- ACQUIRE -------------------------------------------------------------------------------------

MAX_HOLD = 30.0
"""Seconds: the longest a ``Retry-After`` may hold a whole credential (its own event waits
the full time in the retry schedule)."""

# Take send permits from one credential's shared token bucket, and report answers to it.
# KEYS: 1 ingest:send-rate:{credential}  2 ingest:{q}:send-rates
# ARGV: 1 now (unix)  2 permits wanted  3 permits given back (taken before, never used)
#       4 answers accepted  5 answers 429  6 other answers  7 largest Retry-After of those
#       429s (-1: none)  8 rate the answers' RateLimit fields allow (-1: none)
#       9 rate before anything was learned  10 bucket size in seconds of the rate
#       11 12 13 19 a window closes after at least ARGV[11] s (or the hash's w_min, which
#       the learner stores: shorter while it starts) once it holds ARGV[12] answers and
#       answers to ARGV[19] of its permits, or after ARGV[13] s. Judged on its first
#       answers only, a window flew blind: four workers at 3,840/s had 61 of 909 permits
#       answered, and the limit taken from them was half the API's; waiting for the
#       answers paces the learner by the answers' lag, as TCP is paced by its ACKs
#       14 credential id  15 seconds the hash lives after its last use
#       16 the window the answers' permits were taken in, as this script returned it ('':
#       whichever is open)
#       17 the longest hold, s  18 the share of its permits a held window waits to have
#       answered  19 (above)  20 429s that can exhaust a window (below)
# Exhausted: when ARGV[20] of a window's answers are 429, and at least twice as many as the
# 200s since its first 429 (w_ok1: the 200s counted before it), the limit is exhausted
# (every moment sends more requests to be refused; "most of all answers are 429" took a
# window that began on a refilled bucket 0.8 s and 737 429s). Twice: a probe 45% over the
# limit of four workers on a busy machine answered as many 429s as 200s, and a hold of a
# second with a cut by half cost more than the 429s it saved. The credential is held at once, for
# the window's largest Retry-After (1 s without one, ARGV[17] at most), and the window
# (w_held: when it held) stays open until ARGV[18] of its permits are answered, or the hold
# ends, its seconds counted to when it held (nothing was sent after): judged
# when it closed, it held the first answers only (4 workers at 7,680/s: 71 of 912), and the
# limit taken from them was a quarter of the API's. Permits are granted by neither the call
# that holds nor the one that closes a held window: those go after the learner's decision.
# Returns {granted, wait, rate, hold_until, learner, window, w_start}: wait is the seconds
# until the next permit (or the hold's end), learner the JSON the learner stored (or false),
# window, only for the one caller that closed it, {seconds, ok, 429, other, granted,
# retry_after, header_rate, ok_first, held}, else {}, and w_start the window this call's
# permits count in.
# Fractions travel as strings (Lua numbers returned to Redis are cut to integers).
# A window holds the answers to its own permits only: answers that arrive after their
# window closed (their requests' latency, or a worker that waited out a hold before it
# reported) would be judged against another window's rate, and held answers after a hold
# made the learner hold again and again. The permits taken by the call that closes a
# window count in the next one, with their answers.
# Why Lua: the bucket is read, refilled and taken from by every worker on every host, and
# exactly one of them must close each window; one script is atomic and one round trip.
ACQUIRE = """
local key, index = KEYS[1], KEYS[2]
local now, wanted, unused = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local h = redis.call('HMGET', key, 'rate', 'tokens', 'ts', 'hold_until', 'learner',
  'w_start', 'w_ok', 'w_429', 'w_other', 'w_granted', 'w_ra', 'w_hr', 'w_min', 'w_ok1',
  'w_held')
local rate = tonumber(h[1]) or tonumber(ARGV[9])
local size = math.max(1, rate * tonumber(ARGV[10]))
local tokens = tonumber(h[2]) or size
local ts = tonumber(h[3]) or now
local hold = tonumber(h[4]) or 0
tokens = math.min(size, tokens + math.max(0, now - ts) * rate + unused)
local w_tag = h[6] or tostring(now)
local w_start = tonumber(w_tag)
local counted = (ARGV[16] == '' or ARGV[16] == w_tag) and 1 or 0
local ok_before = tonumber(h[7]) or 0
local ok = ok_before + counted * tonumber(ARGV[4])
local ok_first = tonumber(h[14]) or -1
if ok_first < 0 and counted == 1 and tonumber(ARGV[5]) > 0 then ok_first = ok_before end
local throttled = (tonumber(h[8]) or 0) + counted * tonumber(ARGV[5])
local other = (tonumber(h[9]) or 0) + counted * tonumber(ARGV[6])
local taken = math.max(0, (tonumber(h[10]) or 0) - unused)
local retry_after = math.max(tonumber(h[11]) or -1, tonumber(ARGV[7]))
local header_rate = tonumber(h[12]) or -1
local reported = tonumber(ARGV[8])
if reported > 0 and (header_rate < 0 or reported < header_rate) then header_rate = reported end
local held = tonumber(h[15]) or 0
local granting = true
if held == 0 and throttled >= tonumber(ARGV[20]) and ok_first >= 0
   and throttled >= 2 * (ok - ok_first) then
  local wait = retry_after >= 0 and retry_after or 1
  hold = math.max(hold, now + math.min(wait, tonumber(ARGV[17])))
  held = now
end
local window = {}
local elapsed = now - w_start
local answered = ok + throttled + other
local closing
if held > 0 then
  closing = answered >= tonumber(ARGV[18]) * taken or now >= hold
  granting = not closing
  elapsed = held - w_start  -- what it sent in: nothing went after the hold began
else
  closing = elapsed >= (tonumber(h[13]) or tonumber(ARGV[11]))
    and ((answered >= tonumber(ARGV[12]) and answered >= tonumber(ARGV[19]) * taken)
         or elapsed >= tonumber(ARGV[13]))
end
if closing then
  window = {tostring(elapsed), ok, throttled, other, taken, tostring(retry_after),
            tostring(header_rate), ok_first, held > 0 and 1 or 0}
  w_tag, ok, throttled, other, taken, retry_after, header_rate = tostring(now), 0, 0, 0, 0, -1, -1
  ok_first, held = -1, 0
end
local granted = 0
if granting and now >= hold and wanted > 0 then
  -- (+0.001: a refill of exactly n tokens, from unix times ~2e9 with ~1e-7 s of precision,
  -- may fall just short)
  granted = math.min(wanted, math.floor(tokens + 0.001))
  tokens = tokens - granted
end
local wait = 0
if hold > now then
  wait = hold - now
elseif tokens < 1 then
  wait = (1 - tokens) / rate
end
taken = taken + granted
redis.call('HSET', key, 'rate', tostring(rate), 'tokens', tostring(tokens), 'ts', tostring(now),
  'hold_until', tostring(hold), 'w_start', w_tag, 'w_ok', ok, 'w_429', throttled,
  'w_other', other, 'w_granted', taken, 'w_ra', tostring(retry_after),
  'w_hr', tostring(header_rate), 'w_ok1', ok_first, 'w_held', tostring(held))
redis.call('EXPIRE', key, tonumber(ARGV[15]))
redis.call('SADD', index, ARGV[14])
return {granted, tostring(wait), tostring(rate), tostring(hold), h[5], window, w_tag}
"""
_ACQUIRE = Script(ACQUIRE)


# -- STORE_RATE ----------------------------------------------------------------------------------

# Store what the learner decided from a window ACQUIRE returned: the next rate, its own
# state and the shortest window from now on; and a hold, which only ever lengthens.
# KEYS: 1 ingest:send-rate:{credential}
# ARGV: 1 rate  2 hold until (unix; 0: none)  3 the learner's state (JSON)  4 the shortest
#       window ('': as it is)
# Why Lua: ACQUIRE holds a credential itself when the limit is exhausted, and may do so
# between the call that closed a window and the learner's decision on it; a plain HSET of
# the hold the decider saw would end that hold at once.
STORE_RATE = """
local key = KEYS[1]
local hold = math.max(tonumber(redis.call('HGET', key, 'hold_until')) or 0, tonumber(ARGV[2]))
redis.call('HSET', key, 'rate', ARGV[1], 'hold_until', tostring(hold), 'learner', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', key, 'w_min', ARGV[4]) end
"""
STORE_RATE_SCRIPT = Script(STORE_RATE)


def store_rate_call(
    credential: str, rate: float, hold_until: float, learner: str, window_min: float | None
) -> tuple[tuple[str], tuple[str, str, str, str]]:
    """``STORE_RATE``'s keys and arguments."""
    window = "" if window_min is None else repr(window_min)
    return (send_rate(credential),), (repr(rate), repr(hold_until), learner, window)


@dataclass(frozen=True, slots=True)
class Answers:
    """What a worker's requests of one credential got since it last reported."""

    ok: int = 0
    """Any answer but a 429 that came from the API (2xx, 4xx, 5xx)."""
    throttled: int = 0
    """429s."""
    other: int = 0
    """No answer: timeouts, refused or dropped connections."""
    retry_after: float | None = None
    """The largest ``Retry-After`` among the 429s."""
    header_rate: float | None = None
    """The smallest rate the answers' ``RateLimit`` fields allow (requests/s)."""
    window: str = ""
    """The window the answers' permits were taken in (:attr:`Permits.window_start`): they
    count only while it is open. ``""``: in whichever window is open."""

    @property
    def total(self) -> int:
        return self.ok + self.throttled + self.other


NO_ANSWERS = Answers()


@dataclass(frozen=True, slots=True)
class AnswerWindow:
    """One closed window of a credential's answers, from every worker."""

    seconds: float
    ok: int
    throttled: int
    other: int
    granted: int
    """Permits taken in the window (what the fleet sent, give or take requests in flight)."""
    retry_after: float | None
    header_rate: float | None
    ok_before_429: int | None = None
    """The ``ok`` answers counted before the window's first 429 (None: no 429). The answers
    since then tell what the API accepts once its bucket is empty; the whole window's share
    of 429s is diluted by the 200s it answered before, from tokens the bucket had left."""
    held: bool = False
    """The limit was exhausted in this window, and ``ACQUIRE`` held the credential then
    (for its ``Retry-After``) and kept the window open for the rest of its answers; its
    ``seconds`` end when the hold began."""


@dataclass(frozen=True, slots=True)
class BucketShape:
    """How ``ACQUIRE`` sizes the bucket and the window (see its header)."""

    initial_rate: float
    bucket_seconds: float
    window_min: float
    window_answers: int
    window_max: float
    ttl: int
    max_hold: float = MAX_HOLD
    """Seconds: the longest a ``Retry-After`` holds the credential."""
    held_answered: float = 0.9
    """A held window closes once this share of its permits is answered (or its hold ends)."""
    window_answered: float = 0.5
    """Any other window, once this share of its permits is answered too (or at its longest)."""
    exhausted_429s: int = 20
    """429s a window needs (twice the 200s since its first) to hold at once: at 50, slow
    start ran on into a limit of 50/s for a tenth of a second more, 19 more 429s."""


@dataclass(frozen=True, slots=True)
class Permits:
    """What ``ACQUIRE`` granted, and the credential's shared state as it stands."""

    granted: int
    wait: float
    """Seconds until the next permit, or until the hold ends."""
    rate: float
    hold_until: float
    learner: str | None
    """The learner's stored state (JSON), None before it stored any."""
    window: AnswerWindow | None
    """The window this call closed: its caller alone decides the next rate from it."""
    window_start: str = ""
    """The window the permits granted count in: report their answers with it."""


def _optional(value: str) -> float | None:
    number = float(value)
    return None if number < 0 else number


def _permits(reply: list[Any]) -> Permits:
    granted, wait, rate, hold, learner, window, window_start = reply
    closed = None
    if window:
        seconds, ok, throttled, other, taken, retry_after, header_rate, ok_first, held = window
        closed = AnswerWindow(
            seconds=float(seconds),
            ok=int(ok),
            throttled=int(throttled),
            other=int(other),
            granted=int(taken),
            retry_after=_optional(text(retry_after)),
            header_rate=_optional(text(header_rate)),
            ok_before_429=None if int(ok_first) < 0 else int(ok_first),
            held=bool(int(held)),
        )
    return Permits(
        granted=int(granted),
        wait=float(wait),
        rate=float(rate),
        hold_until=float(hold),
        learner=None if learner is None else text(learner),
        window=closed,
        window_start=text(window_start),
    )


def _acquire_call(
    keys: QueueKeys,
    credential: str,
    shape: BucketShape,
    *,
    now: float,
    wanted: int,
    unused: int,
    answers: Answers,
) -> tuple[tuple[str, str], tuple[Any, ...]]:
    return (send_rate(credential), keys.send_rates), (
        repr(now),
        wanted,
        unused,
        answers.ok,
        answers.throttled,
        answers.other,
        -1 if answers.retry_after is None else answers.retry_after,
        -1 if answers.header_rate is None else answers.header_rate,
        shape.initial_rate,
        shape.bucket_seconds,
        shape.window_min,
        shape.window_answers,
        shape.window_max,
        credential,
        shape.ttl,
        answers.window,
        shape.max_hold,
        shape.held_answered,
        shape.window_answered,
        shape.exhausted_429s,
    )


def acquire(
    conn: redis.Redis,
    keys: QueueKeys,
    credential: str,
    shape: BucketShape,
    *,
    now: float,
    wanted: int,
    unused: int = 0,
    answers: Answers = NO_ANSWERS,
) -> Permits:
    """Take up to ``wanted`` permits of ``credential`` (one round trip), give back
    ``unused`` ones, and add ``answers`` to its current window."""
    call = _acquire_call(
        keys, credential, shape, now=now, wanted=wanted, unused=unused, answers=answers
    )
    return _permits(_ACQUIRE.run(conn, *call))


async def acquire_async(
    conn: redis.asyncio.Redis,
    keys: QueueKeys,
    credential: str,
    shape: BucketShape,
    *,
    now: float,
    wanted: int,
    unused: int = 0,
    answers: Answers = NO_ANSWERS,
) -> Permits:
    """:func:`acquire` on an asyncio connection."""
    call = _acquire_call(
        keys, credential, shape, now=now, wanted=wanted, unused=unused, answers=answers
    )
    return _permits(await _ACQUIRE.run_async(conn, *call))
