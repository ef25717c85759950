-- Count one against every quota, or none when any is used up. KEYS: the quotas.
-- ARGV: now, then a limit and a resets_at per key.
local now = tonumber(ARGV[1])
local ends = {}
for i, key in ipairs(KEYS) do
  local count, resets_at = counted(key, now)
  if resets_at and count >= tonumber(ARGV[i * 2]) then
    return {'exhausted', i - 1, resets_at}
  end
  ends[i] = resets_at or false
end
for i, key in ipairs(KEYS) do
  count_one(key, ends[i], tonumber(ARGV[i * 2 + 1]), now)
end
return {'taken'}
