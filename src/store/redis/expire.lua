-- The purger's pass over one channel's outbox: jobs whose code expired while no worker
-- took them end `expired`, their message erased. KEYS: queue, delayed.
-- ARGV: now, key tag, retention (ms). Returns how many ended.
local now, tag, ended = tonumber(ARGV[1]), ARGV[2], 0
local function expire(id)
  local job = tag .. ':job:' .. id
  local state = redis.call('HGET', job, 'state')
  if state ~= 'queued' then return state == false end
  if tonumber(redis.call('HGET', job, 'expires_at')) > now then return false end
  redis.call('HSET', job, 'state', 'expired', 'updated_at', ARGV[1],
    'error', 'the code expired before it could be delivered')
  redis.call('PEXPIRE', job, ARGV[3])
  redis.call('DEL', tag .. ':msg:' .. id)
  ended = ended + 1
  return true
end
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1000)) do
  if expire(e[2][2]) then
    redis.pcall('XACK', KEYS[1], 'workers', e[1])
    redis.call('XDEL', KEYS[1], e[1])
  end
end
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, 999)) do
  if expire(id) then redis.call('ZREM', KEYS[2], id) end
end
return ended
