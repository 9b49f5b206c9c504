-- Claims idempotency keys, or tells the caller what happened to each before: one key,
-- or a whole batch in one round trip.
--
-- KEYS[i]      idempotency key   e.g. wallet:idem:{u1}:payment:order-1
-- ARGV[1]      claim TTL in ms   a claim left by a crashed process expires on its own
-- ARGV[2i]     fingerprint       what the request asked for (user id, normalised amount)
-- ARGV[2i+1]   owner token       random per request
--
-- Returns one answer per key, each one of
--   {'claimed'}             the caller owns the key and must complete or abandon it
--   {'done', reply}         a finished request: replay `reply`
--   {'pending', ttl_ms}     the same request is being processed right now
--   {'mismatch'}            the key was used for a different request
local answers = {}
for i = 1, #KEYS do
  local key, wanted, owner = KEYS[i], ARGV[2 * i], ARGV[2 * i + 1]
  local entry = redis.call('HMGET', key, 'state', 'fingerprint', 'reply')
  local state, fingerprint, reply = entry[1], entry[2], entry[3]
  if not state then
    redis.call('HSET', key, 'state', 'pending', 'fingerprint', wanted, 'owner', owner)
    redis.call('PEXPIRE', key, ARGV[1])
    answers[i] = {'claimed'}
  elseif fingerprint ~= wanted then
    answers[i] = {'mismatch'}
  elseif state == 'done' then
    answers[i] = {'done', reply}
  else
    answers[i] = {'pending', redis.call('PTTL', key)}
  end
end
return answers
