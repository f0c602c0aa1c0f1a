-- The worklist store's write: one batch of items, optionally fenced.
--! include store/apply_batch
--
-- KEYS[1]  idx:start
-- KEYS[2]  expiry
-- KEYS[3]  optional fence key (the workers' apply lock)
-- ARGV[1]  the batch as JSON (store.worklist_store.batch_json)
-- ARGV[2]  the token KEYS[3] must hold (with KEYS[3] only)
-- Guarantees: all or nothing (see apply_batch); with a fence, nothing is written unless
-- the fence key still holds the token, so a worker that lost its lock writes nothing.
-- Returns the number of items written or deleted, or -1 when the fence was lost.
if #KEYS >= 3 and redis.call('GET', KEYS[3]) ~= ARGV[2] then return -1 end
return apply_batch(KEYS[1], KEYS[2], cjson.decode(ARGV[1]))
