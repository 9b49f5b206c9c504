-- Takes per-wallet locks that are free and hands out their next fencing tokens, for one
-- wallet or for a whole batch of them in one round trip.
--
-- KEYS[3i-2] lock key       e.g. wallet:wallet:{u1}:lock
-- KEYS[3i-1] fence key      e.g. wallet:wallet:{u1}:fence      (same hash slot)
-- KEYS[3i]   contended key  e.g. wallet:wallet:{u1}:contended  (same hash slot)
-- ARGV[1]    owner token    random per acquisition, shared by the wallets of a batch
-- ARGV[2]    lease in ms
--
-- Returns two answers per wallet, in the order of KEYS. When the lock was taken: the
-- fencing token (> 0), and the counter as it was found (0 when there was none), which
-- equals the caller's own last token exactly when no one took the lock since. Otherwise
-- the lock is marked contended (so its release is announced) and the answers are minus
-- the time in ms the current lease still has to run (at least 1), so a waiter knows how
-- long it may sleep, and 0. A wallet held elsewhere never stops the others of the
-- batch.
--
-- Each counter is first raised to Redis's clock, in microseconds since the epoch, when
-- it is behind it, so a token issued at time t is t + 1 (a little more when several are
-- issued within one microsecond). When Redis loses the counter (a restart without
-- persistence, a failover to a replica that lagged, an older snapshot restored) the
-- next token, issued later, is still above every token issued before the loss. The
-- bound and what it assumes of the clock are in `src/lock/mod.rs`. Tokens stay below
-- 2^53, exact in Lua's numbers, until the year 2255.
local answers = {}
local now = nil
for i = 1, #KEYS, 3 do
  local lock, fence, contended = KEYS[i], KEYS[i + 1], KEYS[i + 2]
  if redis.call('SET', lock, ARGV[1], 'NX', 'PX', ARGV[2]) then
    if not now then
      local time = redis.call('TIME')
      now = tonumber(time[1]) * 1000000 + tonumber(time[2])
    end
    local found = redis.call('GET', fence) or '0'
    local current = tonumber(found)
    if current < now then
      -- '%.0f': tostring would print an exponent and drop digits.
      redis.call('SET', fence, string.format('%.0f', now))
    end
    answers[#answers + 1] = redis.call('INCR', fence)
    -- As a string: exact, whatever the size.
    answers[#answers + 1] = found
  else
    local ttl = redis.call('PTTL', lock)
    if ttl < 1 then ttl = 1 end
    redis.call('SET', contended, '1', 'PX', ARGV[2])
    answers[#answers + 1] = -ttl
    answers[#answers + 1] = '0'
  end
end
return answers
