-- Releases per-wallet locks the caller still owns, one wallet or a batch of them in one
-- round trip, and wakes the waiters of every instance through one pub/sub channel. Runs
-- after lib/release.lua.
--
-- KEYS[2i-1] lock key
-- KEYS[2i]   contended key (set by a waiter that found the lock taken)
-- ARGV[1]    owner token
-- ARGV[2]    release channel   e.g. wallet:lock-released
-- ARGV[2+i]  wallet user id    (the message: waiters for that wallet retry at once)
--
-- Returns one answer per wallet, those of `release`.
local answers = {}
for i = 1, #KEYS, 2 do
  answers[#answers + 1] = release(KEYS[i], KEYS[i + 1], ARGV[1], ARGV[2], ARGV[2 + (i + 1) / 2])
end
return answers
