-- Count one against every quota, or none when any is used up. KEYS: the quotas (hashes
-- {count, resets_at}). ARGV: now, then a limit and a resets_at per key. A counter past
-- its resets_at counts as zero, by the application's clock, as the SQLite store does.
local now = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[i * 2])
  local state = redis.call('HMGET', key, 'count', 'resets_at')
  if state[2] and tonumber(state[2]) > now and tonumber(state[1]) >= limit then
    return {'exhausted', i - 1, tonumber(state[2])}
  end
end
for i, key in ipairs(KEYS) do
  local resets_at = tonumber(ARGV[i * 2 + 1])
  local state = redis.call('HMGET', key, 'count', 'resets_at')
  if state[2] and tonumber(state[2]) > now then
    redis.call('HINCRBY', key, 'count', 1)
  else
    redis.call('HSET', key, 'count', 1, 'resets_at', resets_at)
    redis.call('PEXPIRE', key, ttl(resets_at, now))
  end
end
return {'taken'}
