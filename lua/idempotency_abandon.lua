-- Gives up a claim without caching anything (insufficient funds, lock timeout, an error):
-- the same key may be tried again at once.
--
-- KEYS[1] idempotency key
-- ARGV[1] owner token
--
-- Returns 1 when the claim was removed.
if redis.call('HGET', KEYS[1], 'state') == 'pending'
   and redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
