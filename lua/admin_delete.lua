-- Delete jobs and everything about them, except while they run.
-- A job deleted before it finished counts as canceled for its dependents (they are
-- canceled through the outbox, as when a parent dies); otherwise they would wait for ever.
-- KEYS: jobs, payloads, results, ready, scheduled, deferred, completed, dead, canceled,
--   dependents, outbox
-- ARGV: wake_channel, then ids
-- Returns per id: 1 deleted, -1 no such job, -2 refused (processing: abort it first).
local jobs, payloads, results, ready, scheduled, deferred, completed, dead, canceled, dependents =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local outbox = KEYS[11]
local out = {}
local fanned = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local rec = load_job(jobs, id)
  if not rec then
    table.insert(out, -1)
  elseif rec.status == 'processing' then
    table.insert(out, -2)
  else
    if not TERMINAL[rec.status] then
      fanned = fanned + fan_out(dependents, outbox, id, 'canceled')
    end
    if rec.status == 'ready' then redis.call('LREM', ready, 0, id) end
    redis.call('ZREM', scheduled, id)
    redis.call('ZREM', deferred, id)
    redis.call('ZREM', completed, id)
    redis.call('ZREM', dead, id)
    redis.call('ZREM', canceled, id)
    redis.call('HDEL', jobs, id)
    redis.call('HDEL', payloads, id)
    redis.call('HDEL', results, id)
    redis.call('HDEL', dependents, id)
    table.insert(out, 1)
  end
end
if fanned > 0 then redis.call('PUBLISH', ARGV[1], 'd') end
return out
