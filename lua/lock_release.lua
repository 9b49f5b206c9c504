-- Releases per-wallet locks the caller still owns, one wallet or a batch of them in one
-- round trip, and wakes the waiters of every instance through one pub/sub channel.
--
-- KEYS[2i-1] lock key
-- KEYS[2i]   contended key (set by a waiter that found the lock taken)
-- ARGV[1]    owner token
-- ARGV[2]    release channel   e.g. wallet:lock-released
-- ARGV[2+i]  wallet user id    (the message: waiters for that wallet retry at once)
--
-- Returns one answer per wallet: 0 when the lease had already passed to someone else,
-- 1 when released, 2 when released and announced to waiters.
local answers = {}
for i = 1, #KEYS, 2 do
  local lock, contended = KEYS[i], KEYS[i + 1]
  local answer = 0
  if redis.call('GET', lock) == ARGV[1] then
    redis.call('DEL', lock)
    answer = 1
    -- Uncontended releases (most of them) publish nothing; a waiter that loses the next
    -- race marks the lock contended again.
    if redis.call('DEL', contended) == 1 then
      redis.call('PUBLISH', ARGV[2], ARGV[2 + (i + 1) / 2])
      answer = 2
    end
  end
  answers[#answers + 1] = answer
end
return answers
