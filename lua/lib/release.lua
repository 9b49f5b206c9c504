-- release(lock, contended, owner, channel, user_id): releases a wallet's lock the caller
-- still owns and, when a waiter marked it contended, publishes the wallet's user id on
-- the channel all instances listen to. Returns 0 when the lease had already passed to
-- someone else, 1 when released, 2 when released and announced to waiters.
local function release(lock, contended, owner, channel, user_id)
  if redis.call('GET', lock) ~= owner then
    return 0
  end
  redis.call('DEL', lock)
  -- Uncontended releases (most of them) publish nothing; a waiter that loses the next
  -- race marks the lock contended again.
  if redis.call('DEL', contended) == 1 then
    redis.call('PUBLISH', channel, user_id)
    return 2
  end
  return 1
end

