-- Record a processed cron fire: history (trimmed), the last tick fired, and the fire
-- released from the `taken` set.
-- KEYS: fired (hash id -> last tick), history (zset of this entry), taken
-- ARGV: id, tick, history member (JSON), taken entry (raw, or '' if none), keep,
--   '1' if the fire made (or found) its job: only such ticks count as the last fired
--   (the overlap check looks for that tick's job)
local fired, history, taken = KEYS[1], KEYS[2], KEYS[3]
local id, tick = ARGV[1], tonumber(ARGV[2])
local last = tonumber(redis.call('HGET', fired, id) or '-1')
if tick > last and ARGV[6] == '1' then redis.call('HSET', fired, id, tick) end
redis.call('ZADD', history, tick, ARGV[3])
redis.call('ZREMRANGEBYRANK', history, 0, -(tonumber(ARGV[5]) + 1))
if ARGV[4] ~= '' then redis.call('ZREM', taken, ARGV[4]) end
return 1
