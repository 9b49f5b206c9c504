-- settle(key, action, owner, fingerprint, reply, ttl_ms): ends a claim once its request
-- is answered. 'done' caches the reply for ttl_ms (24 h by default) unless another
-- request holds the key's claim now (it will find the same answer in the database).
-- 'abandon' (nothing was applied) removes only a pending claim the caller owns, so the
-- key may be tried again at once. Returns 1 when the key changed, else 0. Runs after
-- lib/entry.lua.
local function settle(key, action, owner, fingerprint, reply, ttl_ms)
  local state, _, holder = entry(redis.call('GET', key))
  local ours = state == 'p' and holder == owner
  if action == 'done' then
    if state ~= 'p' or ours then
      redis.call('SET', key, 'd\n' .. fingerprint .. '\n' .. reply, 'PX', ttl_ms)
      return 1
    end
  elseif ours then
    return redis.call('DEL', key)
  end
  return 0
end
