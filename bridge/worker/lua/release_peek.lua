-- Release the apply lock if it is still ours, then say whether the head is parsed.
--
-- KEYS[1]  the apply lock          KEYS[2]  the ingest line
-- ARGV[1]  our lock token          ARGV[2]  parsed:<id> prefix
-- Guarantees: no lost wake-up. A worker that stored its outcome while we held the lock
-- found it busy and left; the caller sees the parsed head here and applies it.
-- Returns 1 when the head is parsed, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
local head = redis.call('LINDEX', KEYS[2], 0)
if not head then return 0 end
return redis.call('EXISTS', ARGV[2] .. head)
