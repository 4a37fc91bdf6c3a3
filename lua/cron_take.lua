-- Take one fire out of the cron outbox for processing: exactly one server gets it. It
-- stays in the `taken` set until recorded (cron_done), and cron_due puts it back in the
-- outbox if its taker died.
-- KEYS: outbox, taken
-- ARGV: outbox entry (raw)
-- Returns 1 if this caller took it, 0 if another did.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], now_ms(), ARGV[1])
return 1
