-- Keep the answer of the request that owns the key, or free the key. KEYS: the key's
-- hash. ARGV: now, fingerprint, answer ('' frees it), keep_until.
local now = tonumber(ARGV[1])
if redis.call('HGET', KEYS[1], 'fp') ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  if redis.call('HEXISTS', KEYS[1], 'answer') == 0 then redis.call('DEL', KEYS[1]) end
  return 1
end
redis.call('HSET', KEYS[1], 'answer', ARGV[3], 'until', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl(tonumber(ARGV[4]), now))
return 1
