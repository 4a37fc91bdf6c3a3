-- Which cron entries are due, on the Redis clock; also puts back in the outbox the fires
-- whose taker died before recording them.
-- KEYS: next (zset entry id -> next tick, unix ms), outbox, taken
-- ARGV: limit, stale_ms
-- Returns {now, {id, tick, ...}, ms until the earliest later tick or -1}
local now = now_ms()
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[2]))
for _, raw in ipairs(stale) do
  redis.call('ZREM', KEYS[3], raw)
  redis.call('RPUSH', KEYS[2], raw)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
local later = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local wait = -1
if later[2] then wait = tonumber(later[2]) - now end
return { now, due, wait }
