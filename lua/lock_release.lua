-- Releases the per-wallet lock if, and only if, the caller still owns it, and wakes the
-- waiters of every instance through one pub/sub channel, when there are any.
--
-- KEYS[1] lock key
-- KEYS[2] contended key (set by a waiter that found the lock taken)
-- ARGV[1] owner token
-- ARGV[2] release channel   e.g. wallet:lock-released
-- ARGV[3] wallet user id    (the message: waiters for that wallet retry at once)
--
-- Returns 0 when the lease had already passed to someone else, 1 when released, 2 when
-- released and announced to waiters.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  -- Uncontended releases (most of them) publish nothing; a waiter that loses the next
  -- race marks the lock contended again.
  if redis.call('DEL', KEYS[2]) == 1 then
    redis.call('PUBLISH', ARGV[2], ARGV[3])
    return 2
  end
  return 1
end
return 0
