-- Settles claims once their requests are answered: one key, or a whole batch in one
-- round trip. A claim is either completed (its reply cached for the idempotency TTL) or
-- abandoned (nothing was applied: the same key may be tried again at once).
--
-- KEYS[i]      idempotency key
-- ARGV[1]      reply TTL in ms (24 h by default)
-- ARGV[4i-2]   'done' or 'abandon'
-- ARGV[4i-1]   owner token
-- ARGV[4i]     fingerprint            (for 'done')
-- ARGV[4i+1]   reply, as JSON         (for 'done')
--
-- A reply is stored when the caller still owns the claim or the claim has expired; a
-- newer claimant's entry is left alone (it will find the same answer in the database).
-- An abandon removes only a pending claim the caller owns. Returns how many keys changed.
local changed = 0
for i = 1, #KEYS do
  local key, action, owner = KEYS[i], ARGV[4 * i - 2], ARGV[4 * i - 1]
  local current = redis.call('HGET', key, 'owner')
  if action == 'done' then
    if not current or current == owner then
      redis.call('DEL', key)
      redis.call('HSET', key, 'state', 'done', 'fingerprint', ARGV[4 * i], 'reply', ARGV[4 * i + 1])
      redis.call('PEXPIRE', key, ARGV[1])
      changed = changed + 1
    end
  elseif current == owner and redis.call('HGET', key, 'state') == 'pending' then
    changed = changed + redis.call('DEL', key)
  end
end
return changed
