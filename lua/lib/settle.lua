-- settle(key, action, owner, fingerprint, reply, ttl_ms): ends a claim once its request
-- is answered. 'done' caches the reply for ttl_ms (24 h by default) when the caller
-- still owns the claim or the claim has expired; a newer claimant's entry is left alone
-- (it will find the same answer in the database). 'abandon' (nothing was applied)
-- removes only a pending claim the caller owns, so the key may be tried again at once.
-- Returns 1 when the key changed, else 0.
local function settle(key, action, owner, fingerprint, reply, ttl_ms)
  local current = redis.call('HGET', key, 'owner')
  if action == 'done' then
    if not current or current == owner then
      redis.call('DEL', key)
      redis.call('HSET', key, 'state', 'done', 'fingerprint', fingerprint, 'reply', reply)
      redis.call('PEXPIRE', key, ttl_ms)
      return 1
    end
  elseif current == owner and redis.call('HGET', key, 'state') == 'pending' then
    return redis.call('DEL', key)
  end
  return 0
end

