-- Library (no KEYS/ARGV of its own): release_orders(order_prefix, index_prefix, release).
--
-- What becomes of the state of orders that a removal of items left without items, for
-- store_remove.lua (the workers' purge; the operators' delete can share it).
--   order_prefix  keys.order('')            e.g. "mwl:order:"
--   index_prefix  keys.index('order', '')   e.g. "mwl:idx:order:"
--   release       decoded store.worklist_store.OrderRelease.doc():
--                 {orders = [canonical order name, ...], final_ttl = s, open_ttl = s}
-- Per order whose item index is empty *now* (an order that has items again is left
-- alone): its state hash and the alias hashes listed in its 'aliases' field (JSON) that
-- still point to it ('canonical'):
--   * a finished order ('final' set, tombstones included) keeps its record, which is what
--     stops a late or resent NW from bringing a cancelled exam back: a hash without a TTL
--     gets final_ttl, a TTL already set is kept;
--   * any other order: deleted when open_ttl is 0, else a hash without a TTL gets
--     open_ttl (the workers' rule for an order without items), a TTL already set is kept.
-- Returns the number of hashes given a TTL or deleted.
local function release_orders(order_prefix, index_prefix, release)
  local changed = 0
  for _, name in ipairs(release.orders) do
    if redis.call('SCARD', index_prefix .. name) == 0 then
      local key = order_prefix .. name
      local hashes = {key}
      local listed = redis.call('HGET', key, 'aliases')
      if listed then
        for _, alias in ipairs(cjson.decode(listed)) do
          local akey = order_prefix .. alias
          if redis.call('HGET', akey, 'canonical') == name then table.insert(hashes, akey) end
        end
      end
      local final = redis.call('HGET', key, 'final')
      local finished = final and final ~= ''
      for _, h in ipairs(hashes) do
        if not finished and release.open_ttl == 0 then
          changed = changed + redis.call('DEL', h)
        elseif redis.call('TTL', h) == -1 then
          redis.call('EXPIRE', h, finished and release.final_ttl or release.open_ttl)
          changed = changed + 1
        end
      end
    end
  end
  return changed
end
