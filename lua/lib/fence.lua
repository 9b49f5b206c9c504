-- last_token(value): the token in a fence key's value, which is the last token handed
-- out, alone or followed by '|' and its holder's note (lib/release.lua); 0 for none.
local function last_token(value)
  return tonumber(string.match(value or '0', '^%d+')) or 0
end
