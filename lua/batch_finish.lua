-- Ends a batch in one round trip (one call per hash slot on a cluster): caches its
-- replies (or frees its claims), then releases its wallets' locks. Runs after
-- lib/entry.lua, lib/settle.lua and lib/release.lua.
--
-- KEYS[1..n]          idempotency keys to settle
-- KEYS[n+3j-2..n+3j]  wallet j's lock, contended and fence keys
-- ARGV[1]             reply TTL in ms
-- ARGV[2]             lock owner token
-- ARGV[3]             release channel
-- ARGV[4]             n, the number of keys to settle
-- ARGV[4i+1..4i+4]    key i's 'done' or 'abandon', claim token, fingerprint, reply
-- ARGV[4n+3+2j]       wallet j's user id
-- ARGV[4n+4+2j]       what wallet j's holder leaves in its fence key, or ''
--
-- Returns one answer per wallet, those of `release`.
local n = tonumber(ARGV[4])
for i = 1, n do
  settle(KEYS[i], ARGV[4 * i + 1], ARGV[4 * i + 2], ARGV[4 * i + 3], ARGV[4 * i + 4], ARGV[1])
end
local answers = {}
local wallet = 0
for i = n + 1, #KEYS, 3 do
  wallet = wallet + 1
  local at = 4 * n + 2 + 2 * wallet
  answers[wallet] = release(KEYS[i], KEYS[i + 1], KEYS[i + 2], ARGV[2], ARGV[3], ARGV[at + 1], ARGV[at + 2])
end
return answers
