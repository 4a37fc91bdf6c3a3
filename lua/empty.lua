-- Cancel up to `limit` waiting jobs of a queue (oldest first); their dependents are
-- canceled through the outbox as for any canceled parent.
-- KEYS: jobs, payloads, results, ready, canceled, dependents, outbox
-- ARGV: limit, canceled_ttl_ms, done_channel, wake_channel
-- Returns the number of jobs canceled.
local jobs, payloads, results, ready, canceled, dependents, outbox =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local ids = redis.call('RPOP', ready, tonumber(ARGV[1]))
if not ids then return 0 end
local now = now_ms()
local count, fanned = 0, 0
for _, id in ipairs(ids) do
  local rec = load_job(jobs, id)
  if rec and rec.status == 'ready' then
    rec.status = 'canceled'
    rec.error = 'canceled: queue emptied'
    fanned = fanned + fan_out(dependents, outbox, id, 'canceled')
    finalize(rec, id, canceled, tonumber(ARGV[2]), now, jobs, payloads, results, dependents)
    notify_done(ARGV[3], id, rec)
    count = count + 1
  end
end
if fanned > 0 then redis.call('PUBLISH', ARGV[4], 'd') end
return count
