-- Takes the per-wallet lock if it is free and hands out the next fencing token.
--
-- KEYS[1] lock key     e.g. pay:wallet:{u1}:lock
-- KEYS[2] fence key    e.g. pay:wallet:{u1}:fence   (same hash slot as the lock)
-- ARGV[1] owner token  random per acquisition
-- ARGV[2] lease in ms
--
-- Returns the fencing token (> 0) when the lock was taken, otherwise minus the time in
-- ms the current lease still has to run (at least 1), so a waiter knows how long the
-- safety-net poll may sleep.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 1 then ttl = 1 end
return -ttl
