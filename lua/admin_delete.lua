-- Delete jobs and everything about them, except while they run.
-- KEYS: jobs, payloads, results, ready, scheduled, deferred, completed, dead, canceled,
--   dependents
-- ARGV: ids
-- Returns per id: 1 deleted, -1 no such job, -2 refused (processing: abort it first).
local jobs, payloads, results, ready, scheduled, deferred, completed, dead, canceled, dependents =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local out = {}
for _, id in ipairs(ARGV) do
  local rec = load_job(jobs, id)
  if not rec then
    table.insert(out, -1)
  elseif rec.status == 'processing' then
    table.insert(out, -2)
  else
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
return out
