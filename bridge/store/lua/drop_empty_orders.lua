-- Delete the state hashes of orders that have no items any more, fenced by a lock.
--
-- KEYS[1]  the fence key (the workers' apply lock)
-- ARGV[1]  the token KEYS[1] must hold
-- ARGV[2]  JSON: [[order index key (idx:order:<key>), [hash keys to delete]], ...]
-- Guarantees: nothing is deleted unless the fence key still holds the token; an order
-- whose index has members again keeps its hashes (it is not "left behind").
-- Returns the number of hashes deleted, or -1 when the fence was lost.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local deleted = 0
for _, order in ipairs(cjson.decode(ARGV[2])) do
  if redis.call('SCARD', order[1]) == 0 then
    for _, key in ipairs(order[2]) do deleted = deleted + redis.call('DEL', key) end
  end
end
return deleted
