-- Stores the reply of a finished request for the idempotency TTL.
--
-- KEYS[1] idempotency key
-- ARGV[1] owner token
-- ARGV[2] fingerprint
-- ARGV[3] reply (JSON)
-- ARGV[4] TTL in ms (24 h by default)
--
-- The reply is stored when the caller still owns the claim or the claim has expired; a
-- newer claimant's entry is left alone (it will find the same answer in the database).
-- Returns 1 when stored.
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'done', 'fingerprint', ARGV[2], 'reply', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
