-- The purger's pass over one channel's outbox: jobs whose code expired while no worker
-- took them (or whose worker died) end `expired`, their message erased; consumers gone
-- for a day leave the group. KEYS: queue, delayed.
-- ARGV: now, key tag, retention (ms). Returns how many jobs ended.
local now, tag, retention, ended = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), 0
-- True when the entry or id has nothing left to send.
local function lapse(id)
  local job = tag .. ':job:' .. id
  local state = redis.call('HGET', job, 'state')
  if state ~= 'queued' and state ~= 'sending' then
    redis.call('ZREM', unfinished_of(KEYS[1]), id)
    return true
  end
  if tonumber(redis.call('HGET', job, 'expires_at')) > now then return false end
  if state == 'sending' and tonumber(redis.call('HGET', job, 'lease_until') or '0') > now then
    return false
  end
  expire_job(job, now, retention)
  ended = ended + 1
  return true
end
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1000)) do
  if lapse(e[2][2]) then
    redis.pcall('XACK', KEYS[1], 'workers', e[1])
    redis.call('XDEL', KEYS[1], e[1])
  end
end
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, 999)) do
  if lapse(id) then redis.call('ZREM', KEYS[2], id) end
end
-- Unfinished jobs whose record is gone (it expired by itself) are not waiting any more.
for _, id in ipairs(redis.call('ZRANGE', unfinished_of(KEYS[1]), 0, 999)) do
  if redis.call('EXISTS', tag .. ':job:' .. id) == 0 then
    redis.call('ZREM', unfinished_of(KEYS[1]), id)
  end
end
-- Every process has a consumer name of its own; those of processes long gone go.
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], 'workers')
if type(consumers) == 'table' and not consumers.err then
  for _, c in ipairs(consumers) do
    local info = {}
    for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
    if info['pending'] == 0 and info['idle'] > 86400000 then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], 'workers', info['name'])
    end
  end
end
return ended
