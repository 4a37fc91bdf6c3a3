-- Claim up to `count` ready jobs of one queue for a worker, under a lease.
-- KEYS: ready, leases, jobs, payloads, meta
-- ARGV: count, lease_ms, worker_id, token_prefix
-- Returns a flat list: id, token, record (JSON), payload, for each job claimed.
-- Nothing if paused.
local ready, leases, jobs, payloads, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if redis.call('HGET', meta, 'paused') == '1' then return {} end
local ids = redis.call('RPOP', ready, tonumber(ARGV[1]))
if not ids then return {} end
local now = now_ms()
local deadline = now + tonumber(ARGV[2])
local out = {}
for i, id in ipairs(ids) do
  local rec = load_job(jobs, id)
  -- An id whose record is gone or no longer ready (canceled, deleted) is stale: drop it.
  if rec and rec.status == 'ready' then
    rec.status = 'processing'
    rec.attempt = (rec.attempt or 0) + 1
    rec.started_at = now
    rec.worker_id = ARGV[3]
    rec.token = ARGV[4] .. ':' .. i
    save_job(jobs, id, rec)
    redis.call('ZADD', leases, deadline, id)
    table.insert(out, id)
    table.insert(out, rec.token)
    table.insert(out, cjson.encode(rec))
    table.insert(out, redis.call('HGET', payloads, id) or '')
  end
end
return out
