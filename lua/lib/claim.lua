-- Runs after lib/entry.lua.
--
-- claim(key, ttl_ms, fingerprint, owner): claims one idempotency key, or tells what
-- happened to it before. One of
--   {'claimed'}             the caller owns the key and must complete or abandon it
--   {'done', reply}         a finished request: replay `reply`
--   {'pending', ttl_ms}     the same request is being processed right now
--   {'mismatch'}            the key was used for a different request
-- A claim left by a crashed process expires on its own after ttl_ms. A second run of
-- the same claim (a client that sent its call again: `src/redis_support.rs`, per_slot)
-- finds the key claimed by its own owner and answers {'claimed'} again.
local function claim(key, ttl_ms, wanted, owner)
  local found = redis.call('GET', key)
  if not found then
    redis.call('SET', key, 'p\n' .. wanted .. '\n' .. owner, 'PX', ttl_ms)
    return {'claimed'}
  end
  local state, fingerprint, rest = entry(found)
  if fingerprint ~= wanted then
    return {'mismatch'}
  elseif state == 'd' then
    return {'done', rest}
  elseif rest == owner then
    return {'claimed'}
  end
  return {'pending', redis.call('PTTL', key)}
end
