-- A send failed and will be tried again after a backoff: note why and when, keep the
-- message at the head of its order's line (the later ones wait behind it) and let the
-- order's lock go.
--
-- KEYS[1]  outlock:<order>        KEYS[2]  out:<msg id>         KEYS[3]  outstats
-- ARGV[1]  our lock token         ARGV[2]  now (epoch s)        ARGV[3]  next attempt at
-- ARGV[4]  the failure's kind (connect, timeout, dropped, reject, invalid_reply; never
--          message content)
-- Guarantees: fenced by the lock token. The next attempt time is written before the lock
-- is released, in one step, so no job sends the message before it is due.
-- Returns 1, or -1 when the lock is not ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[2], 'last_error', ARGV[4], 'last_error_at', ARGV[2],
           'next_attempt_at', ARGV[3])
redis.call('HINCRBY', KEYS[3], 'retried', 1)
redis.call('HSET', KEYS[3], 'last_error', ARGV[4], 'last_error_at', ARGV[2])
redis.call('DEL', KEYS[1])
return 1
