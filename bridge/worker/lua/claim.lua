-- Take the message jobs queued right behind ours off the rq queue: this job parses
-- their messages as one batch.
--
-- KEYS[1]  rq's queue list (job ids, oldest first)
-- KEYS[2]  batch:<leader>, the batch list
-- KEYS[3]  rq's set of the workers registered on the queue
-- ARGV[1]  how many jobs to take at most
-- ARGV[2]  rq's job hash prefix      ARGV[3]  our job id prefix ('msg-')
-- ARGV[4]  msg:<id> prefix           ARGV[5]  the leader's message id
-- ARGV[6]  batch list TTL in s       ARGV[7]  batch:<id> prefix
-- (KEYS[1], KEYS[3] and ARGV[2] follow rq's key layout: bridge.worker.rq_compat.)
-- Guarantees: taken jobs are deleted from rq and their message ids appended to the
-- batch list, which lives until the batch's outcomes are stored, so a re-run of the
-- leader's job or the stuck-head recovery finds them; each message hash notes its
-- leader. Takes at most the queue's length divided by the workers on the queue (a fair
-- share, so no worker idles), stops at the first job that is not a message job, and at
-- the re-queued job of a message that leads an unfinished batch (its own run must
-- carry that batch). The leader's own job, when called outside rq, is simply passed.
-- Returns {whether the batch list existed before, the batch list}.
local existed = redis.call('EXISTS', KEYS[2])
local workers = math.max(1, redis.call('SCARD', KEYS[3]))
local take = math.min(tonumber(ARGV[1]), math.floor(redis.call('LLEN', KEYS[1]) / workers))
for i = 1, take do
  local jid = redis.call('LINDEX', KEYS[1], 0)
  if not jid or string.sub(jid, 1, #ARGV[3]) ~= ARGV[3] then break end
  local mid = string.sub(jid, #ARGV[3] + 1)
  if mid ~= ARGV[5] and redis.call('EXISTS', ARGV[7] .. mid) == 1 then break end
  redis.call('LPOP', KEYS[1])
  redis.call('DEL', ARGV[2] .. jid)
  if mid ~= ARGV[5] then
    redis.call('RPUSH', KEYS[2], mid)
    if redis.call('EXISTS', ARGV[4] .. mid) == 1 then
      redis.call('HSET', ARGV[4] .. mid, 'leader', ARGV[5])
    end
  end
end
if redis.call('EXISTS', KEYS[2]) == 0 then return {existed, {}} end
redis.call('EXPIRE', KEYS[2], ARGV[6])
return {existed, redis.call('LRANGE', KEYS[2], 0, -1)}
