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
--
-- The counter is first raised to Redis's clock, in microseconds since the epoch, when
-- it is behind it, so a token issued at time t is t + 1 (a little more when several are
-- issued within one microsecond). When Redis loses the counter (a restart without
-- persistence, a failover to a replica that lagged, an older snapshot restored) the
-- next token, issued later, is still above every token issued before the loss. The
-- bound and what it assumes of the clock are in `src/lock/mod.rs`. Tokens stay below
-- 2^53, exact in Lua's numbers, until the year 2255.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
  local current = tonumber(redis.call('GET', KEYS[2]) or '0')
  if current < now then
    -- '%.0f': tostring would print an exponent and drop digits.
    redis.call('SET', KEYS[2], string.format('%.0f', now))
  end
  return redis.call('INCR', KEYS[2])
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 1 then ttl = 1 end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
return -ttl
