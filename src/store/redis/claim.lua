-- Take due jobs of one channel. KEYS: queue (stream), delayed (retries by due time).
-- ARGV: now, lease_until, max, consumer, key tag, retention (ms).
-- Returns {id, target, payload, attempts, expires_at} per job taken.
local now, max, tag = tonumber(ARGV[1]), tonumber(ARGV[3]), ARGV[5]
local queue, group = KEYS[1], 'workers'
-- Made here rather than once at start, so that a Redis that lost its data recovers.
redis.pcall('XGROUP', 'CREATE', queue, group, '0', 'MKSTREAM')

for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)) do
  redis.call('XADD', queue, '*', 'id', id)
  redis.call('ZREM', KEYS[2], id)
end

local taken = {}
-- Jobs whose lease ran out (their worker died): taken over, whoever held them.
for _, pending in ipairs(redis.call('XPENDING', queue, group, '-', '+', 1000)) do
  if #taken >= max then break end
  local entry = pending[1]
  local body = redis.call('XRANGE', queue, entry, entry)
  if #body == 0 then
    redis.call('XACK', queue, group, entry)
  else
    local id = body[1][2][2]
    local lease = tonumber(redis.call('HGET', tag .. ':job:' .. id, 'lease_until') or '0')
    if lease <= now then
      redis.call('XCLAIM', queue, group, ARGV[4], 0, entry)
      table.insert(taken, {entry, id})
    end
  end
end
if #taken < max then
  local read = redis.call('XREADGROUP', 'GROUP', group, ARGV[4], 'COUNT', max - #taken,
    'STREAMS', queue, '>')
  if read then
    for _, e in ipairs(read[1][2]) do table.insert(taken, {e[1], e[2][2]}) end
  end
end

local jobs = {}
for _, t in ipairs(taken) do
  local entry, id = t[1], t[2]
  local job, msg = tag .. ':job:' .. id, tag .. ':msg:' .. id
  local state = redis.call('HGET', job, 'state')
  local ended = function()
    redis.call('XACK', queue, group, entry)
    redis.call('XDEL', queue, entry)
  end
  local payload = redis.call('GET', msg)
  if state ~= 'queued' and state ~= 'sending' then
    ended()
  elseif tonumber(redis.call('HGET', job, 'expires_at')) <= now then
    -- A code that has expired is worthless to its recipient: do not send it late.
    local last = redis.call('HGET', job, 'error')
    local why = 'the code expired before it could be delivered'
    if last then why = why .. ' (last error: ' .. last .. ')' end
    redis.call('HSET', job, 'state', 'expired', 'updated_at', ARGV[1], 'error', why)
    redis.call('HDEL', job, 'lease_until', 'entry')
    redis.call('PEXPIRE', job, ARGV[6])
    redis.call('DEL', msg)
    ended()
  elseif not payload then
    redis.call('HSET', job, 'state', 'failed', 'updated_at', ARGV[1],
      'error', 'the stored job could not be read')
    redis.call('HDEL', job, 'lease_until', 'entry')
    redis.call('PEXPIRE', job, ARGV[6])
    ended()
  else
    local attempts = redis.call('HINCRBY', job, 'attempts', 1)
    redis.call('HSET', job, 'state', 'sending', 'lease_until', ARGV[2], 'updated_at', ARGV[1],
      'entry', entry)
    table.insert(jobs, {id, redis.call('HGET', job, 'target'), payload, tostring(attempts),
      redis.call('HGET', job, 'expires_at')})
  end
end
return jobs
