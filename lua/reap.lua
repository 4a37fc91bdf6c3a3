-- Recover jobs whose lease expired (their worker died or hung): back to the front of the
-- queue, or to the dead-letter queue once recovered more than max_recoveries times.
-- KEYS: leases, jobs, payloads, results, ready, dead, meta, dependents, outbox,
--   completed, canceled
-- ARGV: limit, max_recoveries, dead_ttl_ms, wake_channel, done_channel, completed_ttl_ms
-- A job aborted while its worker died is recorded as stopped instead.
-- Returns {recovered, dead_lettered (or stopped), ms until the next lease expires or -1,
--   swept ids}.
-- It also sweeps expired terminal records, so retention holds on idle queues too.
local leases, jobs, payloads, results, ready, dead, meta =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local dependents, outbox, completed, canceled = KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local max_recoveries, dead_ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local recovered, buried = 0, 0
local swept = {}
for _, id in ipairs(expired) do
  redis.call('ZREM', leases, id)
  local rec = load_job(jobs, id)
  if rec and rec.status == 'processing' then
    rec.recoveries = (rec.recoveries or 0) + 1
    rec.token = nil
    rec.worker_id = nil
    if rec.abort then
      -- Aborted while its worker died: it must not run again.
      rec.status = 'stopped'
      rec.error = 'aborted: ' .. rec.abort
      rec.abort = nil
      if fan_out(dependents, outbox, id, 'stopped') > 0 then
        redis.call('PUBLISH', ARGV[4], 'd')
      end
      if finalize(rec, id, canceled, dead_ttl, now, jobs, payloads, results, dependents) then
        table.insert(swept, id)
      end
      notify_done(ARGV[5], id, rec)
      buried = buried + 1
    elseif rec.recoveries > max_recoveries then
      rec.status = 'dead_letter'
      rec.error = 'lease expired ' .. rec.recoveries .. ' times: the job keeps killing or hanging its worker'
      if fan_out(dependents, outbox, id, 'dead_letter') > 0 then
        redis.call('PUBLISH', ARGV[4], 'd')
      end
      if finalize(rec, id, dead, dead_ttl, now, jobs, payloads, results, dependents) then
        table.insert(swept, id)
      end
      redis.call('HINCRBY', meta, 'failed', 1)
      redis.call('HINCRBY', meta, 'failed:' .. day_of(now), 1)
      notify_done(ARGV[5], id, rec)
      buried = buried + 1
    else
      rec.status = 'ready'
      save_job(jobs, id, rec)
      push_ready(ready, id, true, ARGV[4])
      recovered = recovered + 1
    end
  end
end
local nxt = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
local wait = -1
if nxt[2] then wait = math.max(0, tonumber(nxt[2]) - now) end
local completed_ttl = tonumber(ARGV[6])
for _, pair in ipairs({ { completed, completed_ttl }, { dead, dead_ttl }, { canceled, dead_ttl } }) do
  for _, id in ipairs(sweep(pair[1], pair[2], now, jobs, payloads, results, dependents, 1000)) do
    table.insert(swept, id)
  end
end
return { recovered, buried, wait, swept }
