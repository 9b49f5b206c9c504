-- acquire(lock, fence, contended, owner, lease_ms): takes one wallet's lock if it is
-- free and hands out its next fencing token. Returns the token (> 0) and the fence key
-- as it was found: '0' when there was none, the last token handed out, or that token
-- followed by '|' and the note its holder left at release (lib/release.lua). A note is
-- found only when no one took the lock since that holder released it: every
-- acquisition writes the bare token. Otherwise marks the lock contended (so its
-- release is announced) and returns minus the time in ms its lease still has to run
-- (at least 1), so a waiter knows how long it may sleep, and '0'. Runs after
-- lib/fence.lua. A second run of the same acquisition (a client that sent its call
-- again: `src/redis_support.rs`, per_slot) finds the lock held by its own owner and
-- answers the token it handed out then, and '0' (the note it found then is gone).
--
-- The counter is first raised to Redis's clock, in microseconds since the epoch, when it
-- is behind it, so a token issued at time t is t + 1 (a little more when several are
-- issued within one microsecond). When Redis loses the counter (a restart without
-- persistence, a failover to a replica that lagged, an older snapshot restored) the
-- next token, issued later, is still above every token issued before the loss. The
-- bound and what it assumes of the clock are in `src/lock/mod.rs`. Tokens stay below
-- 2^53, exact in Lua's numbers, until the year 2255.
local acquire_now = nil
local function acquire(lock, fence, contended, owner, lease_ms)
  if redis.call('SET', lock, owner, 'NX', 'PX', lease_ms) then
    if not acquire_now then
      local time = redis.call('TIME')
      acquire_now = tonumber(time[1]) * 1000000 + tonumber(time[2])
    end
    local found = redis.call('GET', fence) or '0'
    local token = math.max(last_token(found), acquire_now) + 1
    -- '%.0f': tostring would print an exponent and drop digits.
    redis.call('SET', fence, string.format('%.0f', token))
    return token, found
  end
  if redis.call('GET', lock) == owner then
    return last_token(redis.call('GET', fence)), '0'
  end
  local ttl = redis.call('PTTL', lock)
  if ttl < 1 then ttl = 1 end
  redis.call('SET', contended, '1', 'PX', lease_ms)
  return -ttl, '0'
end
