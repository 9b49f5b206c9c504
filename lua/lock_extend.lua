-- Renews the lease of a lock the caller still owns.
--
-- KEYS[1] lock key
-- ARGV[1] owner token
-- ARGV[2] lease in ms
--
-- Returns 1 when renewed, 0 when the lease was lost (the holder must not commit).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
