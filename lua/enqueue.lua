-- Enqueue one or more jobs into one queue.
-- KEYS: jobs, payloads, results, ready, scheduled, completed, dead, deferred, canceled,
--   outbox
-- ARGV: wake_channel, then per job: id, record (JSON), payload, mode, when_ms, nonce
--   mode: 'b' back of the queue, 'f' front, 'i' in when_ms ms, 'a' at unix ms when_ms,
--         'd' deferred until its parents resolve (the record carries `pending`, and
--         `links`: [parent id, parent queue] pairs, turned into outbox entries that
--         the resolver applies, so the edges are recorded even if the client dies)
-- Returns per job {code, status}: 0 created, 1 replay of this very call (lost reply),
--   -1 duplicate (the id is taken; status is the existing job's).
local jobs, payloads, results, ready, scheduled, completed, dead, deferred, canceled =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local outbox = KEYS[10]
local wake = ARGV[1]
local now = now_ms()
local out = {}
local earliest = nil
for i = 2, #ARGV, 6 do
  local id, mode, when, nonce = ARGV[i], ARGV[i + 3], tonumber(ARGV[i + 4]), ARGV[i + 5]
  local rec = cjson.decode(ARGV[i + 1])
  local old = load_job(jobs, id)
  local code = 0
  if old then
    if old.nonce == nonce then
      code = 1
    elseif rec.unique or not TERMINAL[old.status] then
      code = -1
    else
      -- The id is reused after its job finished: forget the old run.
      redis.call('ZREM', completed, id)
      redis.call('ZREM', dead, id)
      redis.call('ZREM', canceled, id)
      redis.call('HDEL', results, id)
    end
  end
  if code ~= 0 then
    table.insert(out, { code, old.status })
  else
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
    end
    save_job(jobs, id, rec)
    redis.call('HSET', payloads, id, ARGV[i + 2])
    if rec.status == 'ready' then push_ready(ready, id, rec.at_front, wake) end
    table.insert(out, { 0, rec.status })
  end
end
if earliest then
  local first = redis.call('ZRANGE', scheduled, 0, 0, 'WITHSCORES')
  if tonumber(first[2]) == earliest then redis.call('PUBLISH', wake, 's') end
end
return out
