-- Enable or disable a cron entry for every server at once.
-- KEYS: entries, next
-- ARGV: id, '1' enable / '0' disable, next_tick (when enabling; -1: never)
-- Returns 1, or 0 if there is no such entry.
local entries, next_key = KEYS[1], KEYS[2]
local id = ARGV[1]
local raw = redis.call('HGET', entries, id)
if not raw then return 0 end
local def = cjson.decode(raw)
def.enabled = ARGV[2] == '1'
redis.call('HSET', entries, id, cjson.encode(def))
if def.enabled and tonumber(ARGV[3]) >= 0 then
  redis.call('ZADD', next_key, tonumber(ARGV[3]), id)
else
  redis.call('ZREM', next_key, id)
end
return 1
