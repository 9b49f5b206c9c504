-- Takes per-wallet locks that are free and hands out their next fencing tokens, for one
-- wallet or for a whole batch of them in one round trip. Runs after lib/acquire.lua.
--
-- KEYS[3i-2] lock key       e.g. wallet:wallet:{u1}:lock
-- KEYS[3i-1] fence key      e.g. wallet:wallet:{u1}:fence      (same hash slot)
-- KEYS[3i]   contended key  e.g. wallet:wallet:{u1}:contended  (same hash slot)
-- ARGV[1]    owner token    random per acquisition, shared by the wallets of a batch
-- ARGV[2]    lease in ms
--
-- Returns two answers per wallet, in the order of KEYS, those of `acquire`. A wallet
-- held elsewhere never stops the others of the batch.
local answers = {}
for i = 1, #KEYS, 3 do
  local token, found = acquire(KEYS[i], KEYS[i + 1], KEYS[i + 2], ARGV[1], ARGV[2])
  answers[#answers + 1] = token
  answers[#answers + 1] = found
end
return answers
