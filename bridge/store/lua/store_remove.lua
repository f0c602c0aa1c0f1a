-- Remove worklist items and release the orders they leave without items: one atomic
-- call, optionally fenced.
--! include store/apply_batch
--! include store/release_orders
--
-- KEYS[1]  idx:start
-- KEYS[2]  expiry
-- KEYS[3]  optional fence key (the workers' apply lock)
-- ARGV[1]  the deletes as a batch (store.worklist_store.batch_json, deletes only)
-- ARGV[2]  keys.order('')            ARGV[3]  keys.index('order', '')
-- ARGV[4]  store.worklist_store.OrderRelease as JSON (see release_orders.lua)
-- ARGV[5]  the token KEYS[3] must hold (with KEYS[3] only)
-- Guarantees: all or nothing; with a fence, nothing is written unless the fence key still
-- holds the token. An item and its index entries go together (apply_batch), and an order
-- loses its state only once no item of it is left.
-- Returns {items removed, order hashes released}, or -1 when the fence was lost.
if #KEYS >= 3 and redis.call('GET', KEYS[3]) ~= ARGV[5] then return -1 end
local removed = apply_batch(KEYS[1], KEYS[2], cjson.decode(ARGV[1]))
local released = release_orders(ARGV[2], ARGV[3], cjson.decode(ARGV[4]))
return {removed, released}
