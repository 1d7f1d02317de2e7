"""Every multi-step change to the queue, as one Lua script each, so each is atomic.

Key names come from :mod:`ingest.keys` (see its table); each script lists the keys it
touches. Scripts are loaded once per connection and run with ``EVALSHA``: one round trip.

Why Lua rather than MULTI/EXEC: several steps branch on what they read (is the event a
duplicate? does the worker still hold its lease?), which a transaction cannot do atomically.
"""

from __future__ import annotations

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
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[4]) == 1
   or redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[3], 'duplicates', 1)
  return 0
end
local status = 'queued'
if ARGV[7] == '1' and redis.call('EXISTS', KEYS[6]) == 1 then
  status = 'deferred'
end
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'created_at', ARGV[3], 'enqueued_at', ARGV[3],
  'origin', ARGV[4], 'status', status, 'description', ARGV[6], 'result_ttl', '0',
  'timeout', '60', 'website', ARGV[5], 'attempts', '0')
redis.call('HINCRBY', KEYS[3], 'enqueued', 1)
if status == 'deferred' then
  redis.call('SADD', KEYS[6] .. ':dependents', ARGV[1])
  redis.call('ZADD', KEYS[7], ARGV[8], ARGV[1])
  return 2
end
redis.call('RPUSH', KEYS[2], ARGV[1])
return 1
"""

# Claim up to N events for one worker, after promoting retries that are due.
# KEYS: 1 rq:queue:{q}  2 rq:wip:{q}  3 rq:scheduled:{q}  4 ingest:{q}:paused
# ARGV: 1 now (unix)  2 lease expiry (unix)  3 worker name  4 N  5 job key prefix
#       6 parked key prefix  7 promotion limit
# Returns a flat array: id, data, website, attempts, history ... per event.
# Each claimed event is in RQ's started registry as "{id}:{worker}" scored by its lease
# expiry; if the worker dies the lease runs out and RECLAIM puts the event back.
# Events of a website paused for an auth failure are moved aside to its parked list.
CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[7]))
if #due > 0 then
  redis.call('ZREM', KEYS[3], unpack(due))
  redis.call('RPUSH', KEYS[1], unpack(due))
  for _, id in ipairs(due) do
    redis.call('HSET', ARGV[5] .. id, 'status', 'queued')
  end
end
local ids = redis.call('LPOP', KEYS[1], tonumber(ARGV[4]))
if not ids then return {} end
local any_paused = redis.call('EXISTS', KEYS[4]) == 1
local out = {}
local lease = {}
for _, id in ipairs(ids) do
  local key = ARGV[5] .. id
  local f = redis.call('HMGET', key, 'data', 'website', 'attempts', 'history')
  if f[1] then
    local website = f[2] or '-'  -- keys.DEFAULT_SITE
    if any_paused and redis.call('HEXISTS', KEYS[4], website) == 1 then
      redis.call('RPUSH', ARGV[6] .. website, id)
      redis.call('HSET', key, 'status', 'parked')
    else
      redis.call('HSET', key, 'status', 'started', 'started_at', ARGV[1])
      lease[#lease + 1] = ARGV[2]
      lease[#lease + 1] = id .. ':' .. ARGV[3]
      out[#out + 1] = id
      out[#out + 1] = f[1]
      out[#out + 1] = website
      out[#out + 1] = f[3] or '0'
      out[#out + 1] = f[4] or ''
    end
  end
end
if #lease > 0 then
  redis.call('ZADD', KEYS[2], unpack(lease))
end
return out
"""

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
local outcomes = cjson.decode(ARGV[7])
local counts = {delivered = 0, api_duplicates = 0, retried = 0, dead_lettered = 0}
local suffix = ':' .. ARGV[2]
local window = tonumber(ARGV[3])
local stale = 0
local function release(id)
  local dkey = ARGV[5] .. id .. ':dependents'
  if redis.call('EXISTS', dkey) == 0 then return end
  local deps = redis.call('SMEMBERS', dkey)
  for _, dep in ipairs(deps) do
    if redis.call('ZREM', KEYS[7], dep) == 1 then
      redis.call('HSET', ARGV[5] .. dep, 'status', 'queued')
      redis.call('RPUSH', KEYS[2], dep)
    end
  end
  redis.call('DEL', dkey)
end
for _, o in ipairs(outcomes) do
  local kind, id = o[1], o[2]
  if redis.call('ZREM', KEYS[1], id .. suffix) == 0 then
    stale = stale + 1
  elseif kind == 'ok' then
    redis.call('DEL', ARGV[5] .. id)
    if window > 0 then redis.call('SET', ARGV[4] .. id, '1', 'EX', window) end
    release(id)
    counts.delivered = counts.delivered + 1
    if o[3] == 1 then counts.api_duplicates = counts.api_duplicates + 1 end
  elseif kind == 'retry' then
    redis.call('HSET', ARGV[5] .. id, 'status', 'scheduled', 'attempts', o[4], 'history', o[5])
    redis.call('ZADD', KEYS[3], o[3], id)
    counts.retried = counts.retried + 1
  elseif kind == 'dead' then
    redis.call('HSET', KEYS[5], id, o[3])
    redis.call('ZADD', KEYS[6], ARGV[1], id)
    redis.call('DEL', ARGV[5] .. id)
    release(id)
    counts.dead_lettered = counts.dead_lettered + 1
  elseif kind == 'return' then
    redis.call('HSET', ARGV[5] .. id, 'status', 'queued')
    redis.call('LPUSH', KEYS[2], id)
  elseif kind == 'park' then
    redis.call('HSET', ARGV[5] .. id, 'status', 'parked')
    redis.call('LPUSH', ARGV[6] .. o[3], id)
    redis.call('HSETNX', KEYS[9], o[3], o[4])
  end
end
for field, n in pairs(counts) do
  if n > 0 then redis.call('HINCRBY', KEYS[4], field, n) end
end
if counts.delivered > 0 then
  redis.call('HINCRBY', KEYS[8], math.floor(tonumber(ARGV[1])), counts.delivered)
end
return stale
"""

# Put back every event whose lease ran out (its worker died or hung).
# KEYS: 1 rq:wip:{q}  2 rq:queue:{q}
# ARGV: 1 now (unix)  2 limit  3 job key prefix
# Returns how many events went back on the queue (at the front: they are the oldest).
RECLAIM = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local n = 0
for _, member in ipairs(expired) do
  redis.call('ZREM', KEYS[1], member)
  local id = string.match(member, '^([^:]+)')
  if id and redis.call('EXISTS', ARGV[3] .. id) == 1 then
    redis.call('HSET', ARGV[3] .. id, 'status', 'queued')
    redis.call('LPUSH', KEYS[2], id)
    n = n + 1
  end
end
return n
"""

# Lift an auth pause: the website's parked events go back on the queue, in order.
# KEYS: 1 ingest:{q}:parked:{website}  2 rq:queue:{q}  3 ingest:{q}:paused
# ARGV: 1 website  2 job key prefix
# Returns how many events were released.
UNPAUSE = """
local n = 0
while true do
  local ids = redis.call('LPOP', KEYS[1], 1000)
  if not ids then break end
  for _, id in ipairs(ids) do
    redis.call('HSET', ARGV[2] .. id, 'status', 'queued')
  end
  redis.call('RPUSH', KEYS[2], unpack(ids))
  n = n + #ids
end
redis.call('HDEL', KEYS[3], ARGV[1])
return n
"""

# Move dead letters back onto the queue as fresh events (attempts reset).
# KEYS: 1 ingest:{q}:dead  2 ingest:{q}:dead:index  3 rq:queue:{q}  4 ingest:{q}:stats
#       5 rq:queues
# ARGV: 1 job key prefix  2 now (ISO)  3 queue name  4.. ids
# Returns the ids actually requeued (an id already replayed by someone else is skipped).
REPLAY = """
local done = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local raw = redis.call('HGET', KEYS[1], id)
  if raw then
    local rec = cjson.decode(raw)
    redis.call('HSET', ARGV[1] .. id, 'data', rec['data'],
      'created_at', rec['created_at'] or ARGV[2], 'enqueued_at', ARGV[2],
      'origin', ARGV[3], 'status', 'queued',
      'description', rec['description'] or '', 'result_ttl', '0', 'timeout', '60',
      'website', rec['website'] or '-', 'attempts', '0', 'history', rec['history_json'] or '')
    redis.call('RPUSH', KEYS[3], id)
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    done[#done + 1] = id
  end
end
if #done > 0 then
  redis.call('HINCRBY', KEYS[4], 'replayed', #done)
  redis.call('SADD', KEYS[5], KEYS[3])
end
return done
"""

# Delete dead letters for good (an operator's explicit decision, counted as purged).
# KEYS: 1 ingest:{q}:dead  2 ingest:{q}:dead:index  3 ingest:{q}:stats
# ARGV: ids
PURGE = """
local n = 0
for _, id in ipairs(ARGV) do
  if redis.call('HDEL', KEYS[1], id) == 1 then
    redis.call('ZREM', KEYS[2], id)
    n = n + 1
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[3], 'purged', n) end
return n
"""

# Erase one event wherever it waits (an erasure request: it must never be sent again).
# KEYS: 1 rq:queue:{q}  2 rq:scheduled:{q}  3 rq:deferred:{q}  4 ingest:{q}:dead
#       5 ingest:{q}:dead:index  6 ingest:{q}:stats
# ARGV: 1 job key prefix  2 parked key prefix  3 id
# Returns where it was ("queued", "scheduled", "deferred", "parked", "dead"), "in_flight" if
# a worker is sending it right now (not recalled), or false if it was not there.
ERASE = """
local id = ARGV[3]
if redis.call('HDEL', KEYS[4], id) == 1 then
  redis.call('ZREM', KEYS[5], id)
  redis.call('HINCRBY', KEYS[6], 'erased', 1)
  return 'dead'
end
local key = ARGV[1] .. id
local f = redis.call('HMGET', key, 'status', 'website')
local status = f[1]
if not status then return false end
if status == 'started' then return 'in_flight' end
redis.call('LREM', KEYS[1], 0, id)
redis.call('ZREM', KEYS[2], id)
redis.call('ZREM', KEYS[3], id)
redis.call('LREM', ARGV[2] .. (f[2] or '-'), 0, id)
redis.call('DEL', key)
redis.call('HINCRBY', KEYS[6], 'erased', 1)
return status
"""
