-- Health check: proves that Redis answers and runs gqm's scripts (with their common
-- helpers), which PING alone does not. No KEYS, no ARGV. Returns the Redis time in ms.
return now_ms()
