-- Take ownership of one cron tick: exactly one caller, across all servers, moves the
-- entry's next tick from `tick` to `next_tick`; that caller queues the fire in the outbox
-- (same script, so a crash cannot lose it). A tick missed by more than the grace is not
-- fired (no burst of missed ticks after downtime): the entry moves on.
-- KEYS: next, entries, outbox
-- ARGV: id, tick, next_tick (-1: never again), job_id, misfire_grace_ms
-- Returns 'claimed', 'missed', or 'lost' (another server claimed it, or it was disabled).
local next_key, entries, outbox = KEYS[1], KEYS[2], KEYS[3]
local id, tick, next_tick = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local current = redis.call('ZSCORE', next_key, id)
if not current or tonumber(current) ~= tick then return 'lost' end
local raw = redis.call('HGET', entries, id)
if not raw or not cjson.decode(raw).enabled then
  redis.call('ZREM', next_key, id)
  return 'lost'
end
local now = now_ms()
if now < tick then return 'lost' end
if next_tick >= 0 then
  redis.call('ZADD', next_key, next_tick, id)
else
  redis.call('ZREM', next_key, id)
end
if now - tick > tonumber(ARGV[5]) then return 'missed' end
redis.call('LPUSH', outbox, cjson.encode({ id = id, tick = tick, job_id = ARGV[4] }))
return 'claimed'
