-- Claims an idempotency key, or tells the caller what happened to it before.
--
-- KEYS[1] idempotency key   e.g. pay:idem:{payment:order-1}
-- ARGV[1] fingerprint       what the request asked for (user id, normalised amount)
-- ARGV[2] owner token       random per request
-- ARGV[3] claim TTL in ms   a claim left by a crashed process expires on its own
--
-- Returns one of
--   {'claimed'}             the caller owns the key and must complete or abandon it
--   {'done', reply}         a finished request: replay `reply`
--   {'pending', ttl_ms}     the same request is being processed right now
--   {'mismatch'}            the key was used for a different request
local entry = redis.call('HMGET', KEYS[1], 'state', 'fingerprint', 'reply')
local state, fingerprint, reply = entry[1], entry[2], entry[3]
if not state then
  redis.call('HSET', KEYS[1], 'state', 'pending', 'fingerprint', ARGV[1], 'owner', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'claimed'}
end
if fingerprint ~= ARGV[1] then
  return {'mismatch'}
end
if state == 'done' then
  return {'done', reply}
end
return {'pending', redis.call('PTTL', KEYS[1])}
