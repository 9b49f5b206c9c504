-- Settles claims once their requests are answered: one key, or a whole batch in one
-- round trip. Runs after lib/entry.lua and lib/settle.lua.
--
-- KEYS[i]      idempotency key
-- ARGV[1]      reply TTL in ms (24 h by default)
-- ARGV[4i-2]   'done' or 'abandon'
-- ARGV[4i-1]   owner token
-- ARGV[4i]     fingerprint            (for 'done')
-- ARGV[4i+1]   reply, as JSON         (for 'done')
--
-- Returns how many keys changed.
local changed = 0
for i = 1, #KEYS do
  changed = changed + settle(KEYS[i], ARGV[4 * i - 2], ARGV[4 * i - 1], ARGV[4 * i], ARGV[4 * i + 1], ARGV[1])
end
return changed
