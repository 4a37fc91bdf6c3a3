-- Extend the leases of jobs a server is still running.
-- KEYS: leases, jobs
-- ARGV: lease_ms, then per job: id, token
-- Returns {lost, aborted}: ids whose lease is lost (reaped, finished elsewhere): the
-- server stops running them; [id, reason] of jobs flagged for abort (in case the abort
-- message was missed): the server stops them and records them as stopped.
local leases, jobs = KEYS[1], KEYS[2]
local deadline = now_ms() + tonumber(ARGV[1])
local lost, aborted = {}, {}
for i = 2, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local rec = load_job(jobs, id)
  if rec and rec.token == token and rec.status == 'processing'
      and redis.call('ZSCORE', leases, id) then
    redis.call('ZADD', leases, 'XX', deadline, id)
    if rec.abort then table.insert(aborted, { id, rec.abort }) end
  else
    table.insert(lost, id)
  end
end
return { lost, aborted }
