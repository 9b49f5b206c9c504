-- claim(key, ttl_ms, fingerprint, owner): claims one idempotency key, or tells what
-- happened to it before. One of
--   {'claimed'}             the caller owns the key and must complete or abandon it
--   {'done', reply}         a finished request: replay `reply`
--   {'pending', ttl_ms}     the same request is being processed right now
--   {'mismatch'}            the key was used for a different request
-- A claim left by a crashed process expires on its own after ttl_ms.
local function claim(key, ttl_ms, wanted, owner)
  local entry = redis.call('HMGET', key, 'state', 'fingerprint', 'reply')
  local state, fingerprint, reply = entry[1], entry[2], entry[3]
  if not state then
    redis.call('HSET', key, 'state', 'pending', 'fingerprint', wanted, 'owner', owner)
    redis.call('PEXPIRE', key, ttl_ms)
    return {'claimed'}
  elseif fingerprint ~= wanted then
    return {'mismatch'}
  elseif state == 'done' then
    return {'done', reply}
  end
  return {'pending', redis.call('PTTL', key)}
end

