-- Count a login attempt before its password is checked (gqm_web): one counter per key
-- (the user, the client IP), each living one window from its first attempt.
-- Counting first, atomically, is what caps concurrent guesses: the 6th of 50 parallel
-- attempts sees 6 and is refused without a password check.
-- KEYS: the counters. ARGV[1]: the window in ms.
-- Returns: the counts after this attempt, in KEYS order.
local counts = {}
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, ARGV[1]) end
  counts[i] = n
end
return counts
