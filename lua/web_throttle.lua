-- Login attempt counters (gqm_web): one per key (the user, the client IP), each living
-- one window from its first attempt.
-- ARGV[2] = 'count': count an attempt before its password is checked. Counting first,
-- atomically, is what caps concurrent guesses: the 6th of 50 parallel attempts sees 6
-- and is refused without a password check.
-- ARGV[2] = 'refund': take back the attempt of a successful login, only from counters
-- still alive (a DECR on an expired counter would create one that never expires).
-- KEYS: the counters. ARGV[1]: the window in ms.
-- Returns: the counts after the call, in KEYS order.
local counts = {}
for i, key in ipairs(KEYS) do
  if ARGV[2] == 'refund' then
    if redis.call('EXISTS', key) == 1 then
      counts[i] = redis.call('DECR', key)
    else
      counts[i] = 0
    end
  else
    local n = redis.call('INCR', key)
    if n == 1 then redis.call('PEXPIRE', key, ARGV[1]) end
    counts[i] = n
  end
end
return counts
