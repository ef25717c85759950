-- Give back one of each quota counted. KEYS: the quotas. ARGV: now.
local now = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  local state = redis.call('HMGET', key, 'count', 'resets_at')
  if state[2] and tonumber(state[2]) > now and tonumber(state[1]) > 0 then
    redis.call('HINCRBY', key, 'count', -1)
  end
end
return 1
