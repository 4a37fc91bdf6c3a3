-- Pause or resume a queue: a paused queue keeps accepting jobs but hands none out.
-- KEYS: meta, ready
-- ARGV: '1' pause / '0' resume, wake_channel
-- Returns 1 if the state changed, 0 if it already was so.
local meta, ready = KEYS[1], KEYS[2]
if ARGV[1] == '1' then
  return redis.call('HSET', meta, 'paused', '1')
end
local changed = redis.call('HDEL', meta, 'paused')
if changed == 1 and redis.call('LLEN', ready) > 0 then redis.call('PUBLISH', ARGV[2], 'r') end
return changed
