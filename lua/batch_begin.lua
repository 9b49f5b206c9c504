-- Starts a batch in one round trip (one call per hash slot on a cluster): claims its
-- idempotency keys, then takes its wallets' locks. Runs after lib/entry.lua,
-- lib/claim.lua, lib/fence.lua and lib/acquire.lua.
--
-- KEYS[1..n]              idempotency keys           e.g. wallet:request:{u1}:payment:o-1
-- KEYS[n+3j-2..n+3j]      wallet j's lock, fence and contended keys
-- ARGV[1]                 claim TTL in ms
-- ARGV[2]                 lock owner token (one per batch)
-- ARGV[3]                 lease in ms
-- ARGV[4]                 n, the number of keys to claim
-- ARGV[3+2i], ARGV[4+2i]  key i's fingerprint and claim token
--
-- Returns the n answers of `claim`, then two per wallet, those of `acquire`.
local n = tonumber(ARGV[4])
local answers = {}
for i = 1, n do
  answers[i] = claim(KEYS[i], ARGV[1], ARGV[3 + 2 * i], ARGV[4 + 2 * i])
end
for i = n + 1, #KEYS, 3 do
  local token, found = acquire(KEYS[i], KEYS[i + 1], KEYS[i + 2], ARGV[2], ARGV[3])
  answers[#answers + 1] = token
  answers[#answers + 1] = found
end
return answers
