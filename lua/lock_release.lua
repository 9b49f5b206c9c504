-- Releases the per-wallet lock if, and only if, the caller still owns it, and wakes the
-- waiters of every instance through one pub/sub channel.
--
-- KEYS[1] lock key
-- ARGV[1] owner token
-- ARGV[2] release channel   e.g. pay:lock-released
-- ARGV[3] wallet user id    (the message: waiters for that wallet retry at once)
--
-- Returns 1 when released, 0 when the lease had already passed to someone else.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
