-- Let an order's delivery lock go; with ARGV[3] = 'if_empty' only when its line is
-- empty, and then the order leaves the pending set in the same step.
--
-- KEYS[1]  outlock:<order>        KEYS[2]  outq:<order>        KEYS[3]  outpending
-- ARGV[1]  our lock token         ARGV[2]  the order key       ARGV[3]  'if_empty' | 'always'
-- Guarantees: no lost wake-up. A worker appends a message and adds the order to the
-- pending set in one script, then queues a job; a job that found the lock busy has
-- left, counting on the holder. The holder's last look at the line is atomic with
-- its release: it sees the new message (and goes on), or the message came after the
-- release, and its own job finds the lock free.
-- Returns 1 when released, 0 when the line is not empty (the lock is kept, go on),
-- -1 when the lock is not ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if ARGV[3] == 'if_empty' then
  if redis.call('LLEN', KEYS[2]) > 0 then return 0 end
  redis.call('SREM', KEYS[3], ARGV[2])
end
redis.call('DEL', KEYS[1])
return 1
