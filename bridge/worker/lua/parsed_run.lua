-- Library (no KEYS/ARGV of its own): parsed_run(ingest, seq_key, parsed_prefix, limit).
--
-- The parsed messages at the head of the ingest line, in order, up to ``limit``: a run
-- the apply-lock holder plans and writes in one go. Stops at the first message without
-- a parsed outcome (parsed:<id>), so a run never skips a message.
-- Returns (run, seq): run = {id, outcome, id, outcome, ...}; seq = the ingest sequence
-- number of the run's first message (INCRBY consumes one per message), 0 for no run.
local function parsed_run(ingest, seq_key, parsed_prefix, limit)
  local run = {}
  for _, h in ipairs(redis.call('LRANGE', ingest, 0, limit - 1)) do
    local d = redis.call('GET', parsed_prefix .. h)
    if not d then break end
    run[#run + 1] = h
    run[#run + 1] = d
  end
  if #run == 0 then return run, 0 end
  return run, redis.call('INCRBY', seq_key, #run / 2) - #run / 2 + 1
end
