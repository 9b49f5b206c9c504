-- Takes the per-wallet lock if it is free and hands out the next fencing token.
--
-- KEYS[1] lock key       e.g. wallet:wallet:{u1}:lock
-- KEYS[2] fence key      e.g. wallet:wallet:{u1}:fence      (same hash slot)
-- KEYS[3] contended key  e.g. wallet:wallet:{u1}:contended  (same hash slot)
-- ARGV[1] owner token    random per acquisition
-- ARGV[2] lease in ms
--
-- Returns the fencing token (> 0) when the lock was taken. Otherwise marks the lock
-- contended (so its release is announced) and returns minus the time in ms the current
-- lease still has to run (at least 1), so a waiter knows how long it may sleep.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 1 then ttl = 1 end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
return -ttl
