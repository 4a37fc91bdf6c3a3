-- Extend the leases of jobs a server is still running.
-- KEYS: leases, jobs
-- ARGV: lease_ms, then per job: id, token
-- Returns the ids whose lease is lost (reaped, finished elsewhere, canceled): the server
-- stops running them.
local leases, jobs = KEYS[1], KEYS[2]
local deadline = now_ms() + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local rec = load_job(jobs, id)
  if rec and rec.token == token and rec.status == 'processing'
      and redis.call('ZSCORE', leases, id) then
    redis.call('ZADD', leases, 'XX', deadline, id)
  else
    table.insert(lost, id)
  end
end
return lost
