-- Apply a parent's outcome to a deferred child (the child's queue slot).
-- KEYS: jobs, payloads, results, ready, deferred, canceled, dependents, outbox
-- ARGV: child_id, parent_id, parent_status, canceled_ttl_ms, wake_channel, done_channel
-- A completed parent (or any terminal parent of an allow_failure child) resolves the
-- edge; once no edge is pending the child becomes ready. Any other outcome cancels the
-- child, and its own dependents hear of it through this slot's outbox (the cascade).
-- Returns 1 released, 2 canceled, 0 nothing to do (already applied: safe to replay).
local jobs, payloads, results, ready, deferred, canceled, dependents, outbox =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local child, parent, parent_status = ARGV[1], ARGV[2], ARGV[3]
local rec = load_job(jobs, child)
if not rec or rec.status ~= 'deferred' or not rec.pending or not rec.pending[parent] then
  return 0
end
rec.pending[parent] = nil
if parent_status ~= 'completed' and not rec.allow_failure then
  local now = now_ms()
  redis.call('ZREM', deferred, child)
  rec.pending = nil
  rec.status = 'canceled'
  rec.error = 'dependency ' .. parent .. ' ended as ' .. parent_status
  if fan_out(dependents, outbox, child, 'canceled') > 0 then
    redis.call('PUBLISH', ARGV[5], 'd')
  end
  finalize(rec, child, canceled, tonumber(ARGV[4]), now, jobs, payloads, results, dependents)
  notify_done(ARGV[6], child, rec)
  return 2
end
if next(rec.pending) == nil then
  rec.pending = nil
  rec.status = 'ready'
  redis.call('ZREM', deferred, child)
  save_job(jobs, child, rec)
  push_ready(ready, child, rec.at_front, ARGV[5])
  return 1
end
save_job(jobs, child, rec)
return 0
