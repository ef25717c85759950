-- Give back one of each quota counted. KEYS: the quotas. ARGV: now.
local now = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  if counted(key, now) > 0 then redis.call('HINCRBY', key, 'count', -1) end
end
return 1
