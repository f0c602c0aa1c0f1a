-- Store parsed outcomes, drop their batch record, then take the apply lock if there is
-- something to apply: one round trip (one fsync with appendfsync always).
--! include worker/parsed_run
--
-- KEYS[1]  the apply lock
-- KEYS[2]  the ingest line (message ids in ACK order)
-- KEYS[3]  the ingest sequence counter
-- ARGV[1]  lock token          ARGV[2]  lock TTL in ms
-- ARGV[3]  parsed:<id> prefix  ARGV[4]  msg:<id> prefix
-- ARGV[5]  batch:<leader> key the outcomes came from, or ''
-- ARGV[6]  run limit (messages)
-- ARGV[7]  the outcomes as JSON: [[message id, outcome JSON], ...]
-- KEYS[4]  the store's schema version     ARGV[8]  the version this worker writes
-- Guarantees: each outcome is stored with SET NX (a re-run never replaces one) and only
-- for a message that exists and is not applied yet (a slow batch whose messages the
-- recovery applied meanwhile leaves nothing behind). The lock is not taken when the
-- line is empty or its head is not parsed: the head's own job applies it (and then
-- ours) when it stores its outcome (this script is atomic, so that later call sees
-- ours), or the stuck-head recovery does. A head whose message hash is gone will never
-- be parsed: the lock is taken with an empty run so that the caller dead-letters and
-- pops it (drop_missing_head.lua).
-- Nothing is applied on a store of another layout version: {-3, ...} then, and the
-- caller upgrades the store first (bridge.worker.migrations).
-- Returns {acquired 0/1 (-3), head or false, run (id, outcome, ...), seq of the run's first}.
for _, pair in ipairs(cjson.decode(ARGV[7])) do
  local msg = ARGV[4] .. pair[1]
  if redis.call('EXISTS', msg) == 1 and redis.call('HGET', msg, 'state') ~= 'applied' then
    redis.call('SET', ARGV[3] .. pair[1], pair[2], 'NX')
  end
end
if ARGV[5] ~= '' then redis.call('DEL', ARGV[5]) end
if redis.call('GET', KEYS[4]) ~= ARGV[8] then return {-3, false, {}, 0} end
local head = redis.call('LINDEX', KEYS[2], 0)
if not head then return {0, false, {}, 0} end
local parsed = redis.call('EXISTS', ARGV[3] .. head) == 1
if not parsed and redis.call('EXISTS', ARGV[4] .. head) == 1 then return {0, head, {}, 0} end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0, false, {}, 0} end
if not parsed then return {1, head, {}, 0} end
local run, seq = parsed_run(KEYS[2], KEYS[3], ARGV[3], tonumber(ARGV[6]))
return {1, head, run, seq}
