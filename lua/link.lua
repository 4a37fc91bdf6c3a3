-- Record a dependency edge on the parent's side (the parent's queue slot).
-- KEYS: jobs, dependents (of the parent's queue)
-- ARGV: parent_id, child_id, child_queue
-- Returns 'linked' (the parent will announce its outcome through the outbox), the
-- parent's terminal status (the caller resolves the edge at once), or 'missing'.
-- Idempotent: linking the same child twice keeps one edge.
local jobs, dependents = KEYS[1], KEYS[2]
local parent, child, child_queue = ARGV[1], ARGV[2], ARGV[3]
local rec = load_job(jobs, parent)
if not rec then return 'missing' end
if TERMINAL[rec.status] then return rec.status end
local raw = redis.call('HGET', dependents, parent)
local children = {}
if raw then children = cjson.decode(raw) end
for _, c in ipairs(children) do
  if c[1] == child then return 'linked' end
end
table.insert(children, { child, child_queue })
redis.call('HSET', dependents, parent, cjson.encode(children))
return 'linked'
