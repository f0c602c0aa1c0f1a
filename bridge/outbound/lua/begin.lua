-- Start one send: renew the order's delivery lock and count the attempt, before any
-- byte goes out (a process killed mid-send has still used an attempt, so a message
-- that kills its sender every time ends as a dead letter instead of blocking its order).
--
-- KEYS[1]  outlock:<order>        KEYS[2]  outq:<order>        KEYS[3]  out:<msg id>
-- ARGV[1]  our lock token         ARGV[2]  lock TTL in ms      ARGV[3]  the message id
-- ARGV[4]  now (epoch s)
-- Guarantees: nothing is written unless the lock is still ours and the message is
-- still the head of its order's line.
-- Returns the attempt number (1 for the first send), -1 when the lock is not ours,
-- -2 when the message is no longer the head.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('LINDEX', KEYS[2], 0) ~= ARGV[3] then return -2 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[3], 'last_attempt_at', ARGV[4])
return redis.call('HINCRBY', KEYS[3], 'attempts', 1)
