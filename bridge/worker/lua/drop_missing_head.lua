-- Dead-letter and pop an ingest head whose message hash is gone (expired, evicted or
-- deleted: nothing can ever parse it), fenced by the apply lock, in one script: the
-- dead letter exists if and only if the message left the line.
--
-- KEYS[1]  the apply lock          KEYS[2]  the ingest line
-- KEYS[3]  msg:<id> (must be gone)  KEYS[4]  dl:<id> (the dead letter; its id = message id)
-- KEYS[5]  the dead-letter index
-- ARGV[1]  lock token   ARGV[2]  message id   ARGV[3]  lock TTL in ms
-- ARGV[4]  the dead letter's created_at (its score in the index)
-- ARGV[5..] the dead letter's hash: field, value, field, value, ...
-- Guarantees: nothing is written unless we still hold the lock (-1), the message is
-- still the head and its hash is still missing (-2). Then the dead letter, its index
-- entry and the pop, and the lock renewed (the caller looks at the next head).
-- Returns {status, next head or false}: 1 = dead-lettered and popped, <0 = nothing written.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, false} end
if redis.call('LINDEX', KEYS[2], 0) ~= ARGV[2] or redis.call('EXISTS', KEYS[3]) == 1 then
  return {-2, false}
end
redis.call('HSET', KEYS[4], unpack(ARGV, 5))
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[2])
redis.call('LPOP', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, redis.call('LINDEX', KEYS[2], 0) or false}
