-- Moves the fencing counter past the token the database has already seen and hands the
-- caller, who must still own the lock, a fresh token above it. Runs after
-- lib/fence.lua.
--
-- Tokens follow Redis's clock (see lib/acquire.lua), so the counter is found below the
-- database's token only when Redis lost its data and came back with a clock behind the
-- one that issued that token. Holders from before the loss may still hold tokens above
-- the database's, issued after its last write; the counter therefore jumps `margin`
-- past it (or past the clock, if that is further), not just by one.
--
-- KEYS[1] lock key
-- KEYS[2] fence key
-- ARGV[1] owner token
-- ARGV[2] highest token the database holds
-- ARGV[3] margin, in microseconds of the clock
--
-- Returns the new token, or 0 when the caller no longer owns the lock.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local current = last_token(redis.call('GET', KEYS[2]))
local seen = tonumber(ARGV[2])
if current < seen then
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
  local floor = math.max(seen, now) + tonumber(ARGV[3])
  -- '%.0f': tostring would print an exponent and drop digits.
  redis.call('SET', KEYS[2], string.format('%.0f', floor))
end
return redis.call('INCR', KEYS[2])
