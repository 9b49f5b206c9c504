-- An idempotency entry is one string, its parts separated by newlines (which no
-- fingerprint, owner token or JSON reply holds): 'p', the request's fingerprint and its
-- owner's token while the request is processed; 'd', the fingerprint and the reply
-- once it is answered. One GET reads it and one SET (with its TTL) writes it.
local function entry(found)
  if not found then return nil end
  return string.match(found, '^(%a)\n([^\n]*)\n(.*)$')
end
