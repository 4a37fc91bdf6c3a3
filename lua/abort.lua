-- Abort a job: a waiting job is canceled at once; a running one is flagged and its
-- server told (it cancels the handler and records the job as stopped).
-- KEYS: jobs, payloads, results, ready, scheduled, deferred, canceled, dependents, outbox
-- ARGV: id, reason, canceled_ttl_ms, abort_channel, done_channel, wake_channel
-- Returns 'canceled', 'signalled' (running: its server stops it), the terminal status
-- the job already had, or 'missing'.
local jobs, payloads, results, ready, scheduled, deferred, canceled, dependents, outbox =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local id, reason = ARGV[1], ARGV[2]
local rec = load_job(jobs, id)
if not rec then return 'missing' end
if TERMINAL[rec.status] then return rec.status end
if rec.status == 'processing' then
  rec.abort = reason
  save_job(jobs, id, rec)
  redis.call('PUBLISH', ARGV[4], cjson.encode({ id, reason }))
  return 'signalled'
end
redis.call('LREM', ready, 0, id)
redis.call('ZREM', scheduled, id)
redis.call('ZREM', deferred, id)
rec.status = 'canceled'
rec.pending = nil
rec.error = 'canceled: ' .. reason
if fan_out(dependents, outbox, id, 'canceled') > 0 then redis.call('PUBLISH', ARGV[6], 'd') end
finalize(rec, id, canceled, tonumber(ARGV[3]), now_ms(), jobs, payloads, results, dependents)
notify_done(ARGV[5], id, rec)
return 'canceled'
