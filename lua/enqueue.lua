-- Enqueue one or more jobs into one queue.
-- KEYS: jobs, payloads, results, ready, scheduled, completed, dead, deferred, canceled,
--   outbox
-- ARGV: wake_channel, then per job: id, record (JSON), payload, mode, when_ms, nonce
--   mode: 'b' back of the queue, 'f' front, 'i' in when_ms ms, 'a' at unix ms when_ms,
--         'd' deferred until its parents resolve (the record carries `pending`, and
--         `links`: [parent id, parent queue] pairs, turned into outbox entries that
--         the resolver applies, so the edges are recorded even if the client dies)
--   The record must not hold `status`, `created_at` or `nonce`: they are set here.
-- Returns per job {code, status}: 0 created, 1 replay of this very call (lost reply),
--   -1 duplicate (the id is taken, also by an earlier job of this call; status is the
--   existing job's).
--
-- The hot path is batched: one HMGET looks every id up, and the new records, payloads
-- and ready ids are written with one HSET / HSET / LPUSH (RPUSH) per chunk of jobs,
-- not one call per job. A plain job ('b' or 'f') is not decoded: the stored record is
-- the client's JSON with the three fields appended (a JSON decoder keeps the last of
-- repeated keys, so they win even over a stray copy in the client's record).
local jobs, payloads, results, ready, scheduled, completed, dead, deferred, canceled =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local outbox = KEYS[10]
local wake = ARGV[1]
local now = now_ms()
local CHUNK = 500 -- jobs per multi-key call (Lua's unpack has a stack limit)

-- `cmd key ...items` in calls of at most `size` items each; returns the last reply.
local function call_chunked(cmd, key, items, size)
  local n, reply = #items, nil
  for first = 1, n, size do
    reply = redis.call(cmd, key, unpack(items, first, math.min(first + size - 1, n)))
  end
  return reply
end

local count = (#ARGV - 1) / 6
local found = {}
for first = 1, count, CHUNK do
  local ids = {}
  for k = first, math.min(first + CHUNK - 1, count) do ids[#ids + 1] = ARGV[2 + (k - 1) * 6] end
  local olds = redis.call('HMGET', jobs, unpack(ids))
  for k = 1, #ids do found[first + k - 1] = olds[k] end
end

local out = {}
local records, datas, back, front = {}, {}, {}, {}
local taken = {} -- id -> status, for jobs created by this very call
local earliest = nil
for k = 1, count do
  local i = 2 + (k - 1) * 6
  local id, raw, mode, when, nonce = ARGV[i], ARGV[i + 1], ARGV[i + 3], tonumber(ARGV[i + 4]), ARGV[i + 5]
  local code, status = 0, nil
  if taken[id] then
    code, status = -1, taken[id]
  elseif found[k] then
    local old = cjson.decode(found[k])
    status = old.status
    if old.nonce == nonce then
      code = 1
    elseif not TERMINAL[old.status] or cjson.decode(raw).unique then
      code = -1
    else
      -- The id is reused after its job finished: forget the old run.
      redis.call('ZREM', completed, id)
      redis.call('ZREM', dead, id)
      redis.call('ZREM', canceled, id)
      redis.call('HDEL', results, id)
    end
  end
  if code == 0 then
    local stored
    if mode == 'b' or mode == 'f' then
      status = 'ready'
      stored = string.sub(raw, 1, -2) .. ',"status":"ready","created_at":' .. now ..
        ',"nonce":"' .. nonce .. '"}'
    else
      local rec = cjson.decode(raw)
      rec.created_at = now
      rec.nonce = nonce
      local due = nil
      if mode == 'i' then due = now + when elseif mode == 'a' then due = when end
      if mode == 'd' then
        rec.status = 'deferred'
        redis.call('ZADD', deferred, now, id)
        for _, link in ipairs(rec.links) do
          redis.call('LPUSH', outbox, cjson.encode({ l = 1, p = link[1], pq = link[2], c = id, q = rec.queue }))
        end
        rec.links = nil
      elseif due and due > now then
        rec.status = 'scheduled'
        rec.scheduled_at = due
        redis.call('ZADD', scheduled, due, id)
        if earliest == nil or due < earliest then earliest = due end
      else
        rec.status = 'ready'
        if rec.at_front then mode = 'f' end
      end
      status = rec.status
      stored = cjson.encode(rec)
    end
    records[#records + 1] = id
    records[#records + 1] = stored
    datas[#datas + 1] = id
    datas[#datas + 1] = ARGV[i + 2]
    if status == 'ready' then
      if mode == 'f' then front[#front + 1] = id else back[#back + 1] = id end
    end
    taken[id] = status
  end
  out[k] = { code, status }
end

if #records > 0 then -- field, value pairs
  call_chunked('HSET', jobs, records, 2 * CHUNK)
  call_chunked('HSET', payloads, datas, 2 * CHUNK)
end
-- LPUSH at the back, RPUSH at the head (where workers pop); wake idle fetchers when the
-- list was empty before this call.
local pushed, len = #back + #front, 0
if #back > 0 then len = call_chunked('LPUSH', ready, back, CHUNK) end
if #front > 0 then len = call_chunked('RPUSH', ready, front, CHUNK) end
if pushed > 0 and len == pushed then redis.call('PUBLISH', wake, 'r') end
if earliest then
  local first = redis.call('ZRANGE', scheduled, 0, 0, 'WITHSCORES')
  if tonumber(first[2]) == earliest then redis.call('PUBLISH', wake, 's') end
end
return out
