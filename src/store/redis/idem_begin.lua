-- Claim an Idempotency-Key, or say what holds it. KEYS: the key's hash {fp, answer,
-- until}. ARGV: now, fingerprint, pending_until. Times by the application's clock.
local now = tonumber(ARGV[1])
local held = redis.call('HMGET', KEYS[1], 'fp', 'answer', 'until')
if held[3] and tonumber(held[3]) > now then
  if held[1] ~= ARGV[2] then return {'conflict'} end
  if held[2] then return {'replay', held[2]} end
  return {'in_progress'}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'fp', ARGV[2], 'until', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl(tonumber(ARGV[3]), now))
return {'proceed'}
