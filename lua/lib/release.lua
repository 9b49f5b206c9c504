-- release(lock, contended, fence, owner, channel, user_id, left): releases a wallet's
-- lock the caller still owns and, when a waiter marked it contended, publishes the
-- wallet's user id on the channel all instances listen to. `left`, unless empty, is
-- the holder's token, '|' and its note (the wallet's funds as its commit left them):
-- it replaces the bare token in the fence key, for the next holder to find. Returns 0
-- when the lease had already passed to someone else (nothing is written), 1 when
-- released, 2 when released and announced to waiters.
local function release(lock, contended, fence, owner, channel, user_id, left)
  if redis.call('GET', lock) ~= owner then
    return 0
  end
  redis.call('DEL', lock)
  if left ~= '' then
    redis.call('SET', fence, left)
  end
  -- Uncontended releases (most of them) publish nothing; a waiter that loses the next
  -- race marks the lock contended again.
  if redis.call('DEL', contended) == 1 then
    redis.call('PUBLISH', channel, user_id)
    return 2
  end
  return 1
end
