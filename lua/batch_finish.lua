-- Ends a batch in one round trip (one call per hash slot on a cluster): caches its
-- replies (or frees its claims), then releases its wallets' locks. Runs after
-- lib/settle.lua and lib/release.lua.
--
-- KEYS[1..n]          idempotency keys to settle
-- KEYS[n+2j-1..n+2j]  wallet j's lock and contended keys
-- ARGV[1]             reply TTL in ms
-- ARGV[2]             lock owner token
-- ARGV[3]             release channel
-- ARGV[4]             n, the number of keys to settle
-- ARGV[4i+1..4i+4]    key i's 'done' or 'abandon', claim token, fingerprint, reply
-- ARGV[4n+4+j]        wallet j's user id
--
-- Returns one answer per wallet, those of `release`.
local n = tonumber(ARGV[4])
for i = 1, n do
  settle(KEYS[i], ARGV[4 * i + 1], ARGV[4 * i + 2], ARGV[4 * i + 3], ARGV[4 * i + 4], ARGV[1])
end
local answers = {}
local wallet = 0
for i = n + 1, #KEYS, 2 do
  wallet = wallet + 1
  answers[wallet] = release(KEYS[i], KEYS[i + 1], ARGV[2], ARGV[3], ARGV[4 * n + 4 + wallet])
end
return answers
