"""The job store's Lua scripts: every state change of a job is one of these, run atomically.

KEYS are (job hash, pending index, expiry tombstone), and for the scripts that move a claim
the lease index fourth. Timestamps come from `TIME` on
the server, so lease clocks do not depend on worker clocks; effects replication (the default
since Redis 5) makes TIME safe inside writing scripts.
"""

from __future__ import annotations

_CLOCK = """
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function stamp(seconds) return string.format('%.6f', seconds) end
"""

# Jobs kept in each submitter's recent-jobs index (GET /v1/batch); older ones drop out.
RECENT_JOBS_KEPT = 1000

# ARGV: job id, inputs, items, then field/value pairs (input_uri, output_uri, submitted_by).
# Never overwrites: false if the id exists. The pending index lets a reconciler find jobs whose
# message was lost. KEYS[4], when given, is the submitter's recent-jobs index (a sorted set by
# creation time), trimmed to the newest RECENT_JOBS_KEPT.
CREATE = (
    _CLOCK
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local now = clock()
redis.call('HSET', KEYS[1], 'status', 'PENDING', 'inputs', ARGV[2], 'items', ARGV[3],
  'created_at', stamp(now), 'updated_at', stamp(now), 'attempts', 0, 'epoch', 0, 'done', 0,
  'revision', 0, unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], now, ARGV[1])
if KEYS[4] then
  redis.call('ZADD', KEYS[4], now, ARGV[1])
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(RECENT_JOBS_KEPT + 1))
end
return stamp(now)
""".replace("RECENT_JOBS_KEPT", str(RECENT_JOBS_KEPT))
)

# ARGV: owner, lease seconds, the version the claiming worker serves ('' = none), job id.
# Takes a PENDING job, a STARTED one whose lease ran out (its worker died), or - to reprocess
# it - a SUCCESS job whose result came from another model version than the one served now.
# Anything else is refused with the reason.
CLAIM = (
    _CLOCK
    + """
local job = redis.call('HMGET', KEYS[1], 'status', 'lease_expires_at', 'model_version')
local status = job[1]
if not status then return {'unknown'} end
local now = clock()
local lease = tonumber(job[2] or '0') or 0
local reprocess = 0
if status == 'STARTED' then
  if lease > now then return {'leased'} end
elseif status == 'SUCCESS' then
  if ARGV[3] == '' or job[3] == ARGV[3] then return {'finished'} end
  if lease > now then return {'leased'} end
  reprocess = 1
elseif status ~= 'PENDING' then
  return {'finished'}
end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease_expires_at', stamp(now + tonumber(ARGV[2])),
  'updated_at', stamp(now))
if reprocess == 1 then
  -- The old result stays readable until the new one replaces it; no expiry meanwhile.
  redis.call('HSET', KEYS[1], 'reprocessing', '1')
  redis.call('PERSIST', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'status', 'STARTED', 'done', 0)
  redis.call('HSETNX', KEYS[1], 'started_at', stamp(now))
end
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), ARGV[4])
local source = redis.call('HMGET', KEYS[1], 'inputs', 'input_uri', 'output_uri', 'created_at')
return {'claimed', epoch, attempts, source[1] or '[]', reprocess, source[2] or '', source[3] or '',
  source[4] or '', stamp(now)}
"""
)

# Is the job held by (owner, epoch)? STARTED, or SUCCESS while being reprocessed.
_HELD = """
local function held(owner, epoch)
  local job = redis.call('HMGET', KEYS[1], 'status', 'owner', 'epoch', 'reprocessing')
  if job[2] ~= owner or job[3] ~= epoch then return false end
  return job[1] == 'STARTED' or (job[1] == 'SUCCESS' and job[4] == '1')
end
"""

# ARGV: owner, epoch, lease seconds, items done ('' = unchanged), job id. Only the current
# holder may extend; 0 tells a worker its job was revoked or taken over, so it stops.
EXTEND = (
    _CLOCK
    + _HELD
    + """
if not held(ARGV[1], ARGV[2]) then return 0 end
local now = clock()
redis.call('HSET', KEYS[1], 'lease_expires_at', stamp(now + tonumber(ARGV[3])))
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[3]), ARGV[5])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'done', ARGV[4], 'updated_at', stamp(now)) end
return 1
"""
)

# ARGV: owner, epoch, job id, then field/value pairs (last_error). The holder gives a job back
# after a failed attempt, so the next delivery can claim it at once instead of waiting for the
# lease.
RELEASE = (
    _CLOCK
    + _HELD
    + """
if not held(ARGV[1], ARGV[2]) then return 0 end
local now = clock()
redis.call('HDEL', KEYS[1], 'lease_expires_at')
redis.call('ZREM', KEYS[4], ARGV[3])
redis.call('HSET', KEYS[1], 'updated_at', stamp(now), unpack(ARGV, 4))
if redis.call('HGET', KEYS[1], 'reprocessing') == '1' then
  redis.call('HDEL', KEYS[1], 'reprocessing')
  redis.call('EXPIRE', KEYS[1], redis.call('HGET', KEYS[1], 'ttl') or 604800)
else
  -- Not back into the pending index: the nacked message is still alive and will come back.
  redis.call('HSET', KEYS[1], 'status', 'PENDING')
end
return 1
"""
)

# ARGV: terminal status, epoch ('' = whoever holds it, PENDING too; '-' = the same, but not
# a job under a live lease), ttl, job id, then field/value pairs to write. The outcome, the status and the TTL land in one step; a
# reprocessed job's new result replaces the old one and bumps `revision`. Returns false for
# an unknown job, else {1 if changed, the status after the call}.
FINISH = (
    _CLOCK
    + """
local job = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'reprocessing', 'lease_expires_at')
local status = job[1]
if not status then return false end
local reprocessing = job[3] == '1'
if ARGV[2] == '' or ARGV[2] == '-' then
  if status ~= 'PENDING' and status ~= 'STARTED' then return {0, status} end
  if ARGV[2] == '-' and status == 'STARTED' and (tonumber(job[4] or '0') or 0) > clock() then
    return {0, status}
  end
elseif job[2] ~= ARGV[2] or (status ~= 'STARTED' and not reprocessing) then
  return {0, status}
end
local now = stamp(clock())
local final = ARGV[1]
if reprocessing and ARGV[2] ~= '' then
  redis.call('HDEL', KEYS[1], 'reprocessing')
  if final == 'SUCCESS' then
    redis.call('HSET', KEYS[1], 'reprocessed_at', now, 'updated_at', now, unpack(ARGV, 5))
    redis.call('HINCRBY', KEYS[1], 'revision', 1)
  else
    -- A failed re-run keeps the result the job already had.
    final = status
    redis.call('HSET', KEYS[1], 'updated_at', now)
  end
else
  redis.call('HSET', KEYS[1], 'status', final, 'finished_at', now, 'updated_at', now,
    unpack(ARGV, 5))
end
redis.call('HDEL', KEYS[1], 'lease_expires_at')
redis.call('ZREM', KEYS[4], ARGV[4])
redis.call('HSET', KEYS[1], 'ttl', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[4])
-- Outlives the record by 30 days, so an expired id can say so instead of a bare 404.
redis.call('SET', KEYS[3], now, 'EX', tonumber(ARGV[3]) + 2592000)
return {1, final}
"""
)

# KEYS: job hash, pending index. ARGV: job id, backoff, max backoff (seconds).
# After the reconciler published a waiting job's message again: counts the republish and
# moves the job's place in the index on, so the next republish waits longer: the index holds
# a new job at its creation and the reconciler takes it `backoff` seconds later; after the
# n-th republish it takes it again min(backoff * 2^n, max) seconds later. Only a job still
# waiting for its first claim stays in the index (a claim took it out; a finished or vanished
# job is taken out here). Returns the republishes so far, 0 if the job no longer waits.
REQUEUE = (
    _CLOCK
    + """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'PENDING' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
local count = redis.call('HINCRBY', KEYS[1], 'republished', 1)
local backoff = tonumber(ARGV[2])
local wait = math.min(backoff * 2 ^ math.min(count, 30), math.max(backoff, tonumber(ARGV[3])))
redis.call('ZADD', KEYS[2], clock() + wait - backoff, ARGV[1])
return count
"""
)

# KEYS: job hash, lease index. ARGV: job id, backoff, max backoff (seconds).
# After the reconciler published the message of a job whose lease ran out (its worker died or
# stalled): counts it and moves the job's place in the index on, min(backoff * 2^(n-1), max)
# seconds after the n-th time. A job held again meanwhile
# goes back to its lease's deadline; one no longer held leaves the index. Returns the count, 0
# if the job is not (or no longer) a held job with a lapsed lease.
REQUEUE_LAPSED = (
    _CLOCK
    + """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
local job = redis.call('HMGET', KEYS[1], 'status', 'lease_expires_at', 'reprocessing')
if not (job[1] == 'STARTED' or (job[1] == 'SUCCESS' and job[3] == '1')) or not job[2] then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
local now = clock()
local lease = tonumber(job[2]) or 0
if lease > now then
  redis.call('ZADD', KEYS[2], lease, ARGV[1])
  return 0
end
local count = redis.call('HINCRBY', KEYS[1], 'lapsed_republished', 1)
local wait = math.min(tonumber(ARGV[2]) * 2 ^ math.min(count - 1, 30), tonumber(ARGV[3]))
redis.call('ZADD', KEYS[2], now + wait, ARGV[1])
return count
"""
)
