-- Claim up to `count` ready jobs of one queue for a worker, under a lease.
-- KEYS: ready, leases, jobs, payloads, meta, memo (a key unique to this claim attempt)
-- ARGV: count, lease_ms, worker_id, token_prefix (unique to this claim attempt)
-- Returns a flat list: id, token, record (JSON), payload, for each job claimed.
-- Nothing if paused.
-- Replay-safe: the ids and tokens claimed are kept in `memo` for a lease, so the same
-- attempt re-sent after a lost reply gets the same jobs back instead of claiming more
-- (which would strand the first ones until their lease expired).
local ready, leases, jobs, payloads, meta, memo =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local function reply_for(id, rec)
  return { id, rec.token, cjson.encode(rec), redis.call('HGET', payloads, id) or '' }
end
local earlier = redis.call('GET', memo)
if earlier then
  local out = {}
  for _, pair in ipairs(cjson.decode(earlier)) do
    local rec = load_job(jobs, pair[1])
    if rec and rec.status == 'processing' and rec.token == pair[2] then
      for _, v in ipairs(reply_for(pair[1], rec)) do table.insert(out, v) end
    end
  end
  return out
end
if redis.call('HGET', meta, 'paused') == '1' then return {} end
local ids = redis.call('RPOP', ready, tonumber(ARGV[1]))
if not ids then return {} end
local now = now_ms()
local deadline = now + tonumber(ARGV[2])
local out = {}
local claimed = {}
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
    for _, v in ipairs(reply_for(id, rec)) do table.insert(out, v) end
    table.insert(claimed, { id, rec.token })
  end
end
if #claimed > 0 then
  redis.call('SET', memo, cjson.encode(claimed), 'PX', tonumber(ARGV[2]))
end
return out
