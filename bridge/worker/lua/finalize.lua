-- Write a run of applied messages (items, order states, pops) in one fenced script: one
-- round trip (one fsync) per run, and no window in which items are written but their
-- message is still in line.
--! include store/apply_batch
--! include worker/parsed_run
--
-- KEYS[1]  the apply lock      KEYS[2]  the ingest line    KEYS[3]  the sequence counter
-- KEYS[4]  idx:start           KEYS[5]  expiry
-- ARGV[1]  lock token          ARGV[2]  applied message hashes' retention in s
-- ARGV[3]  lock TTL in ms      ARGV[4]  parsed:<id> prefix  ARGV[5]  msg:<id> prefix
-- ARGV[6]  run limit (messages) for the next run
-- ARGV[7]  the run as JSON, in line order: [{"h": message id,
--          "s": [[hash key, {field: value}, ttl s (0 = persist, -1 = leave as is, -2 = as is and only if it exists)], ...],
--          "b": item batch (store.worklist_store.batch_doc) or false,
--          "v": the application-ACK verdict (JSON), "r": result:<id> key or false,
--          "o": outbound HL7 messages [{"k": out:<id>, "q": outq:<order>,
--               "p": outpending, "id": message id, "order": order key,
--               "f": {field: value}}, ...]}, ...]
-- ARGV[8]  TTL in s of a pushed verdict
-- Guarantees: nothing is written unless we still hold the lock (-1) and the run is
-- still the head of the line (-2). Then, per message in order: its items, the pop, its
-- parsed outcome deleted, its hash marked applied with its verdict (kept ARGV[2] s, for
-- audit and to answer a resend), its order states, its outbound messages (the record,
-- its place at the tail of the order's line, the order marked pending: a status
-- message exists exactly when the change that caused it does), and the verdict pushed to whoever
-- waits for it (application-ACK mode): AA goes out only once the items are written. The next run is read in the same call; with none, the lock is released here,
-- atomically with that check, so a worker storing an outcome afterwards finds it free.
-- Returns {status, next head or false, next run, its seq}: 1 = the next run is parsed
-- (lock renewed), 2 = lock released, <0 = nothing written.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, false, {}, 0} end
local entries = cjson.decode(ARGV[7])
local heads = redis.call('LRANGE', KEYS[2], 0, #entries - 1)
for i, e in ipairs(entries) do
  if heads[i] ~= e.h then return {-2, false, {}, 0} end
end
for _, e in ipairs(entries) do
  if e.b then apply_batch(KEYS[4], KEYS[5], e.b) end
  redis.call('LPOP', KEYS[2])
  redis.call('DEL', ARGV[4] .. e.h)
  if redis.call('EXISTS', ARGV[5] .. e.h) == 1 then
    redis.call('HSET', ARGV[5] .. e.h, 'state', 'applied', 'verdict', e.v)
    redis.call('EXPIRE', ARGV[5] .. e.h, ARGV[2])
  end
  if e.r then
    redis.call('RPUSH', e.r, e.v)
    redis.call('EXPIRE', e.r, ARGV[8])
  end
  for _, st in ipairs(e.s) do
    -- -2: only onto a hash that exists (an MPPS instance the SCP may have expired)
    if st[3] ~= -2 or redis.call('EXISTS', st[1]) == 1 then
      for k, v in pairs(st[2]) do redis.call('HSET', st[1], k, v) end
      if st[3] > 0 then
        redis.call('EXPIRE', st[1], st[3])
      elseif st[3] == 0 then
        redis.call('PERSIST', st[1])
      end
    end
  end
  for _, o in ipairs(e.o or {}) do
    for k, v in pairs(o.f) do redis.call('HSET', o.k, k, v) end
    redis.call('RPUSH', o.q, o.id)
    redis.call('SADD', o.p, o.order)
  end
end
local run, seq = parsed_run(KEYS[2], KEYS[3], ARGV[4], tonumber(ARGV[6]))
if #run == 0 then
  redis.call('DEL', KEYS[1])
  return {2, redis.call('LINDEX', KEYS[2], 0) or false, {}, 0}
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, false, run, seq}
