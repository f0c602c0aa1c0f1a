-- Library (no KEYS/ARGV of its own): apply_batch(start_key, expiry_key, batch).
--
-- Writes a batch of worklist items with their indexes and removes deleted ones, for the
-- store's own script (store_apply.lua) and the workers' finalize.lua, so that items and
-- the ingest pop can be written in one atomic call (one fsync).
--   start_key   idx:start, sorted set of item ids by SPS start (YYYYMMDDHHMMSS)
--   expiry_key  expiry, sorted set of item ids by the epoch second of their purge
--   batch       decoded store.worklist_store.batch_doc():
--               {upserts = [{id, key, idxkey, json, indexes = [...], score, expire_at}],
--                deletes = [{id, key, idxkey}]}
-- Guarantees: an item and its index entries change together; an upsert first leaves
-- every index set it was in before (itemidx:<id> lists them), so no stale entry stays.
-- Returns the number of items written or deleted.
local function apply_batch(start_key, expiry_key, batch)
  local function unindex(id, idxkey)
    local old = redis.call('GET', idxkey)
    if old then
      for _, k in ipairs(cjson.decode(old)) do redis.call('SREM', k, id) end
    end
  end
  for _, d in ipairs(batch.deletes) do
    unindex(d.id, d.idxkey)
    redis.call('DEL', d.key, d.idxkey)
    redis.call('ZREM', start_key, d.id)
    redis.call('ZREM', expiry_key, d.id)
  end
  for _, u in ipairs(batch.upserts) do
    unindex(u.id, u.idxkey)
    for _, k in ipairs(u.indexes) do redis.call('SADD', k, u.id) end
    redis.call('SET', u.key, u.json)
    redis.call('SET', u.idxkey, cjson.encode(u.indexes))
    redis.call('ZADD', start_key, u.score, u.id)
    if u.expire_at > 0 then
      redis.call('ZADD', expiry_key, u.expire_at, u.id)
    else
      redis.call('ZREM', expiry_key, u.id)
    end
  end
  return #batch.upserts + #batch.deletes
end
