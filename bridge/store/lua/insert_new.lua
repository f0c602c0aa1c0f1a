-- Insert items that must be new, with the state hashes of their orders, fenced.
--! include store/apply_batch
--
-- KEYS[1]  idx:start
-- KEYS[2]  expiry
-- KEYS[3]  the fence key (the workers' apply lock)
-- ARGV[1]  the token KEYS[3] must hold
-- ARGV[2]  the item batch as JSON (store.worklist_store.batch_json; upserts only)
-- ARGV[3]  JSON list, one entry per item: [item key, idx:suid:<uid> key, idx:spsid:<id> key]
-- ARGV[4]  JSON list of order state hashes: [[key, {field: value, ...}], ...]; each is
--          made persistent (an order lives as long as it has items)
-- Guarantees: all or nothing. Nothing is written unless KEYS[3] holds ARGV[1], no item
-- key exists yet and no stored item has the same Study Instance UID and SPS ID (the
-- check and the write are one atomic step, so a concurrent writer cannot slip a
-- duplicate in between).
-- Returns the number of items written; -1 fence lost, -2 a duplicate (Study Instance UID
-- + SPS ID) exists, -3 an item key exists.
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return -1 end
for _, c in ipairs(cjson.decode(ARGV[3])) do
  if redis.call('EXISTS', c[1]) == 1 then return -3 end
  if #redis.call('SINTER', c[2], c[3]) > 0 then return -2 end
end
local written = apply_batch(KEYS[1], KEYS[2], cjson.decode(ARGV[2]))
for _, st in ipairs(cjson.decode(ARGV[4])) do
  for k, v in pairs(st[2]) do redis.call('HSET', st[1], k, v) end
  redis.call('PERSIST', st[1])
end
return written
