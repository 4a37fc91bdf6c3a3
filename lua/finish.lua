-- Record the outcome of claimed jobs of one queue, fenced by their claim tokens.
-- KEYS: leases, jobs, payloads, results, scheduled, ready, completed, dead, meta,
--   dependents, outbox, canceled
-- ARGV: completed_ttl_ms, dead_ttl_ms, done_channel, wake_channel,
--   then per job: id, token, outcome, data, n1, n2
--   outcome 'c' completed: data = encoded result, n1 = 1 if there is a result
--           'r' retry:     data = error, n1 = delay ms, n2 = 1 if the failure counts
--           'd' dead:      data = error
--           's' stopped (aborted while running): data = reason
--           'h' hand back (shutdown): the claim is undone and does not count
--   A job flagged for abort that gets 'r' or 'h' is recorded as stopped instead.
-- Returns {codes, swept, fanned}: per job 1 done, 2 already done by this same token (a
--   replayed call), 0 refused (the token no longer owns the job: its lease was lost);
--   swept are ids whose retention expired; fanned counts outbox entries for dependents.
local leases, jobs, payloads, results, scheduled, ready, completed, dead, meta =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local dependents, outbox, canceled = KEYS[10], KEYS[11], KEYS[12]
local completed_ttl, dead_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local done_prefix, wake = ARGV[3], ARGV[4]
local now = now_ms()
local day = day_of(now)
local codes = {}
local processed, failed, fanned = 0, 0, 0
local deleted = {}
for i = 5, #ARGV, 6 do
  local id, token, outcome, data = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local rec = load_job(jobs, id)
  local code = 0
  if rec and rec.token == token then
    if rec.status == 'processing' then
      code = 1
      redis.call('ZREM', leases, id)
      rec.worker_id = nil
      if rec.abort and (outcome == 'r' or outcome == 'h') then
        -- An abort was asked of this run, which failed or was handed back before it took
        -- effect: it must not run again (as reap.lua does for a dead worker's job).
        outcome = 's'
        data = 'aborted: ' .. rec.abort
      end
      if outcome == 'c' then
        rec.status = 'completed'
        rec.error = nil
        if ARGV[i + 4] == '1' and completed_ttl ~= 0 then redis.call('HSET', results, id, data) end
        fanned = fanned + fan_out(dependents, outbox, id, 'completed')
        if finalize(rec, id, completed, completed_ttl, now, jobs, payloads, results, dependents) then
          table.insert(deleted, id)
        end
        processed = processed + 1
        notify_done(done_prefix, id, rec)
      elseif outcome == 'r' then
        local due = now + tonumber(ARGV[i + 4])
        rec.status = 'retry'
        rec.error = data
        rec.scheduled_at = due
        if ARGV[i + 5] == '1' then rec.retry_count = (rec.retry_count or 0) + 1 end
        save_job(jobs, id, rec)
        redis.call('ZADD', scheduled, due, id)
        local first = redis.call('ZRANGE', scheduled, 0, 0)
        if first[1] == id then redis.call('PUBLISH', wake, 's') end
        failed = failed + 1
      elseif outcome == 'd' then
        rec.status = 'dead_letter'
        rec.error = data
        fanned = fanned + fan_out(dependents, outbox, id, 'dead_letter')
        if finalize(rec, id, dead, dead_ttl, now, jobs, payloads, results, dependents) then
          table.insert(deleted, id)
        end
        failed = failed + 1
        notify_done(done_prefix, id, rec)
      elseif outcome == 's' then
        rec.status = 'stopped'
        rec.error = data
        rec.abort = nil
        fanned = fanned + fan_out(dependents, outbox, id, 'stopped')
        if finalize(rec, id, canceled, dead_ttl, now, jobs, payloads, results, dependents) then
          table.insert(deleted, id)
        end
        notify_done(done_prefix, id, rec)
      else
        rec.status = 'ready'
        rec.attempt = rec.attempt - 1
        rec.token = nil
        save_job(jobs, id, rec)
        push_ready(ready, id, true, wake)
      end
    elseif (outcome == 'c' and rec.status == 'completed')
        or (outcome == 'r' and (rec.status == 'retry' or rec.status == 'scheduled'))
        or (outcome == 'd' and rec.status == 'dead_letter')
        or ((outcome == 's' or outcome == 'r' or outcome == 'h') and rec.status == 'stopped') then
      code = 2
    end
  end
  table.insert(codes, code)
end
if processed > 0 then
  redis.call('HINCRBY', meta, 'processed', processed)
  redis.call('HINCRBY', meta, 'processed:' .. day, processed)
end
if failed > 0 then
  redis.call('HINCRBY', meta, 'failed', failed)
  redis.call('HINCRBY', meta, 'failed:' .. day, failed)
end
-- Sweep at least as many expired records as this call can add, so retention keeps up.
local limit = 100 + (#ARGV - 4) / 6
local swept = deleted
for _, pair in ipairs({ { completed, completed_ttl }, { dead, dead_ttl }, { canceled, dead_ttl } }) do
  for _, id in ipairs(sweep(pair[1], pair[2], now, jobs, payloads, results, dependents, limit)) do
    table.insert(swept, id)
  end
end
if fanned > 0 then redis.call('PUBLISH', wake, 'd') end
return { codes, swept, fanned }
