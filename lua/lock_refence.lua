-- Moves the fencing counter past the token the database has already seen and hands the
-- caller, who must still own the lock, a fresh token above it.
--
-- Needed after Redis lost its data (a restart without persistence): the counter starts
-- again at 1 while the database remembers a higher token, and every write would be
-- refused as stale.
--
-- KEYS[1] lock key
-- KEYS[2] fence key
-- ARGV[1] owner token
-- ARGV[2] highest token the database holds
--
-- Returns the new token, or 0 when the caller no longer owns the lock.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
local floor = tonumber(ARGV[2])
if current < floor then
  redis.call('SET', KEYS[2], floor)
end
return redis.call('INCR', KEYS[2])
