-- Renews the leases of locks the caller still owns: one wallet, or a batch in one round
-- trip.
--
-- KEYS[i]  lock key
-- ARGV[1]  owner token
-- ARGV[2]  lease in ms
--
-- Returns how many leases were renewed: fewer than #KEYS means one was lost and the
-- holder must not commit.
local renewed = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    renewed = renewed + 1
  end
end
return renewed
