-- Move due delayed jobs and retries of one queue to its ready list.
-- KEYS: scheduled, ready, jobs
-- ARGV: limit, wake_channel
-- Returns {moved, ms until the next job is due or -1}
local scheduled, ready, jobs = KEYS[1], KEYS[2], KEYS[3]
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', scheduled, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local moved = 0
for _, id in ipairs(due) do
  redis.call('ZREM', scheduled, id)
  local rec = load_job(jobs, id)
  if rec and (rec.status == 'scheduled' or rec.status == 'retry') then
    rec.status = 'ready'
    save_job(jobs, id, rec)
    push_ready(ready, id, rec.at_front, ARGV[2])
    moved = moved + 1
  end
end
local nxt = redis.call('ZRANGE', scheduled, 0, 0, 'WITHSCORES')
local wait = -1
if nxt[2] then wait = math.max(0, tonumber(nxt[2]) - now) end
return { moved, wait }
