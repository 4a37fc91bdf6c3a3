-- Read a job's outcome for Client.result(), or ask to be told when it finishes.
-- KEYS: jobs, results
-- ARGV: id
-- Returns {} if there is no such job; {status, error, result} if it is terminal;
-- {status} otherwise, after flagging the record so that its finish publishes.
local jobs, results, id = KEYS[1], KEYS[2], ARGV[1]
local rec = load_job(jobs, id)
if not rec then return {} end
if TERMINAL[rec.status] then
  return { rec.status, rec.error or '', redis.call('HGET', results, id) or false }
end
if not rec.notify then
  rec.notify = 1
  save_job(jobs, id, rec)
end
return { rec.status }
