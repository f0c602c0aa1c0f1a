-- A message is done with (delivered, dead-lettered, or its record was gone): take it
-- off its order's line and count it.
--
-- KEYS[1]  outlock:<order>        KEYS[2]  outq:<order>        KEYS[3]  out:<msg id>
-- KEYS[4]  outstats
-- ARGV[1]  our lock token         ARGV[2]  the message id      ARGV[3]  new state
-- ARGV[4]  now (epoch s)          ARGV[5]  record TTL in s
-- ARGV[6]  the stats counter to count it in ('' = none)
-- ARGV[7]  the reply's MSA-1 ('' if none)                      ARGV[8]  dead letter id
-- Guarantees: fenced by the lock token, so a job that lost its lock (it stalled past
-- the TTL and another took over) neither pops nor counts; the pop happens only while
-- the message is the head, so a repeated settle pops nothing else.
-- Returns 1, or -1 when the lock is not ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('LINDEX', KEYS[2], 0) == ARGV[2] then redis.call('LPOP', KEYS[2]) end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[3], 'state', ARGV[3], 'settled_at', ARGV[4], 'reply', ARGV[7],
             'dead_letter', ARGV[8])
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
if ARGV[6] ~= '' then
  redis.call('HINCRBY', KEYS[4], ARGV[6], 1)
  redis.call('HSET', KEYS[4], 'last_' .. ARGV[6] .. '_at', ARGV[4])
end
return 1
