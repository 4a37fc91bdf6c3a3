-- Shared helpers, prepended to every gqm script when it is loaded (see gqm/_scripts.py).
-- Job records are JSON objects in the queue's `jobs` hash (id -> record); payloads and
-- results live in their own hashes so that state changes never re-encode a payload.
-- Every key comes in through KEYS; all keys of one queue share the `{queue}` hash tag.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local TERMINAL = { completed = true, dead_letter = true, canceled = true, stopped = true, failed = true }

local function load_job(jobs, id)
  local raw = redis.call('HGET', jobs, id)
  if not raw then return nil end
  return cjson.decode(raw)
end

local function save_job(jobs, id, rec)
  redis.call('HSET', jobs, id, cjson.encode(rec))
end

local function day_of(ms)
  return tostring(math.floor(ms / 86400000))
end

-- Tell a waiting Client.result() that the job reached a terminal state: one channel per
-- prefix, the message is the job id.
local function notify_done(channel, id, rec)
  if rec.notify then
    redis.call('PUBLISH', channel, id)
    rec.notify = nil
  end
end

-- Drop terminal records older than ttl ms from an index zset (scored by finish time) and
-- from the record hashes (with their list of dependents). ttl < 0 keeps them forever.
-- Returns the ids removed, so the caller can clean the global id index (another slot).
local function sweep(index, ttl, now, jobs, payloads, results, dependents, limit)
  if ttl < 0 then return {} end
  local old = redis.call('ZRANGEBYSCORE', index, '-inf', now - ttl, 'LIMIT', 0, limit)
  if #old > 0 then
    redis.call('HDEL', jobs, unpack(old))
    redis.call('HDEL', payloads, unpack(old))
    redis.call('HDEL', results, unpack(old))
    redis.call('HDEL', dependents, unpack(old))
    redis.call('ZREM', index, unpack(old))
  end
  return old
end

-- Put a job into a terminal state and apply retention: ttl 0 deletes the record at once
-- (returns true, so the caller reports the id for the id index), otherwise it is indexed
-- by finish time and swept later (ttl -1 keeps it).
-- Announce to dependents (fan_out) before finalizing: a ttl of 0 deletes the list too.
local function finalize(rec, id, index, ttl, now, jobs, payloads, results, dependents)
  rec.completed_at = now
  if ttl == 0 then
    redis.call('HDEL', jobs, id)
    redis.call('HDEL', payloads, id)
    redis.call('HDEL', results, id)
    redis.call('HDEL', dependents, id)
    return true
  end
  save_job(jobs, id, rec)
  redis.call('ZADD', index, now, id)
  return false
end

-- A job reached a terminal state: queue one outbox entry per dependent child, so that
-- the resolver (which may touch other queues' slots) releases or cancels them. The list
-- is kept (for graph reads) until the record is swept; announcing twice (a DLQ job
-- retried by an admin) is harmless, since resolving an edge twice changes nothing.
local function fan_out(dependents, outbox, id, status)
  local raw = redis.call('HGET', dependents, id)
  if not raw then return 0 end
  local children = cjson.decode(raw)
  for _, child in ipairs(children) do
    redis.call('LPUSH', outbox, cjson.encode({ p = id, s = status, c = child[1], q = child[2] }))
  end
  return #children
end

-- Wake idle fetchers when a ready list goes from empty to non-empty.
local function push_ready(ready, id, front, wake_channel)
  local len
  if front then len = redis.call('RPUSH', ready, id) else len = redis.call('LPUSH', ready, id) end
  if len == 1 then redis.call('PUBLISH', wake_channel, 'r') end
end
