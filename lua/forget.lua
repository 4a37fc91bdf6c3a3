-- Remove ids from the global id index, but only entries that still point at this queue
-- (the same custom id may have been reused on another queue since).
-- KEYS: ids
-- ARGV: queue, then ids
-- Returns the number of entries removed.
local removed = 0
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[1] then
    removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return removed
