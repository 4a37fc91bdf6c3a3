-- Put finished-but-failed jobs (dead_letter, canceled, stopped) back in their queue, as
-- fresh jobs: retry counters reset, error kept in `last_error`.
-- KEYS: jobs, ready, dead, canceled
-- ARGV: wake_channel, then ids
-- Returns per id: 1 requeued, 0 not in a retryable state (or gone).
local jobs, ready, dead, canceled = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local rec = load_job(jobs, id)
  if rec and (rec.status == 'dead_letter' or rec.status == 'canceled' or rec.status == 'stopped') then
    redis.call('ZREM', dead, id)
    redis.call('ZREM', canceled, id)
    rec.status = 'ready'
    rec.last_error = rec.error
    rec.error = nil
    rec.retry_count = 0
    rec.recoveries = 0
    rec.token = nil
    rec.pending = nil
    rec.completed_at = nil
    rec.started_at = nil
    -- An abort asked of the run that ended (it lost the race with the job's own end)
    -- must not stop this fresh run.
    rec.abort = nil
    save_job(jobs, id, rec)
    push_ready(ready, id, false, ARGV[1])
    table.insert(out, 1)
  else
    table.insert(out, 0)
  end
end
return out
