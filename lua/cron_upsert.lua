-- Register or update a cron entry's definition. The enabled flag already in Redis wins
-- over the code's (enable/disable through the API is durable); the next tick is set
-- when the entry is new, when its schedule changed, or when it has none while enabled.
-- KEYS: entries, next
-- ARGV: id, definition (JSON, with `enabled` as the default), schedule fingerprint,
--   next_tick (-1: never)
-- Returns 1 if the entry is enabled, 0 if not.
local entries, next_key = KEYS[1], KEYS[2]
local id, fingerprint, next_tick = ARGV[1], ARGV[3], tonumber(ARGV[4])
local def = cjson.decode(ARGV[2])
local old_raw = redis.call('HGET', entries, id)
local reschedule = true
if old_raw then
  local old = cjson.decode(old_raw)
  def.enabled = old.enabled
  reschedule = old.fingerprint ~= fingerprint or not redis.call('ZSCORE', next_key, id)
end
def.fingerprint = fingerprint
redis.call('HSET', entries, id, cjson.encode(def))
if not def.enabled then
  redis.call('ZREM', next_key, id)
  return 0
end
if reschedule then
  if next_tick >= 0 then redis.call('ZADD', next_key, next_tick, id) else redis.call('ZREM', next_key, id) end
end
return 1
