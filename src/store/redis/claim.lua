-- Take due jobs of one channel. KEYS: queue (stream), delayed (retries by due time).
-- ARGV: now, lease_until, max, consumer, key tag, retention (ms).
-- Returns {jobs, expired, failed}: {id, target, payload, attempts, expires_at,
-- created_at} per job taken, and how many jobs this call ended itself.
local now, max, tag = tonumber(ARGV[1]), tonumber(ARGV[3]), ARGV[5]
local queue, group, retention = KEYS[1], 'workers', tonumber(ARGV[6])
-- Made here rather than once at start, so that a Redis that lost its data recovers.
redis.pcall('XGROUP', 'CREATE', queue, group, '0', 'MKSTREAM')

for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)) do
  redis.call('XADD', queue, '*', 'id', id)
  redis.call('ZREM', KEYS[2], id)
end

local jobs, expired, failed = {}, 0, 0
-- Leases a job for sending, or ends an entry that has nothing left to send.
local function take(entry, id)
  local job, msg = tag .. ':job:' .. id, tag .. ':msg:' .. id
  -- One read of every field the decision and the answer need.
  local fields = redis.call('HMGET', job, 'state', 'expires_at', 'target', 'created_at')
  local state, expires_at = fields[1], fields[2]
  local payload = redis.call('GET', msg)
  local finished = true
  if state ~= 'queued' and state ~= 'sending' then
    -- ended meanwhile (or gone): nothing to do
  elseif tonumber(expires_at) <= now then
    -- A code that has expired is worthless to its recipient: do not send it late.
    expire_job(job, msg, now, retention)
    expired = expired + 1
  elseif not payload then
    failed = failed + 1
    redis.call('ZREM', tag .. ':unfinished', id)
    redis.call('HSET', job, 'state', 'failed', 'updated_at', now,
      'error', 'the stored job could not be read')
    redis.call('HDEL', job, 'lease_until', 'entry')
    redis.call('PEXPIRE', job, retention)
  else
    finished = false
    local attempts = redis.call('HINCRBY', job, 'attempts', 1)
    redis.call('HSET', job, 'state', 'sending', 'lease_until', ARGV[2], 'updated_at', now,
      'entry', entry)
    table.insert(jobs, {id, fields[3], payload, tostring(attempts), expires_at, fields[4]})
  end
  if finished then
    redis.call('XACK', queue, group, entry)
    redis.call('XDEL', queue, entry)
  end
end

-- Jobs whose lease ran out (their worker died): taken over, whoever held them.
for _, pending in ipairs(redis.call('XPENDING', queue, group, '-', '+', 1000)) do
  if #jobs >= max then break end
  local entry = pending[1]
  local body = redis.call('XRANGE', queue, entry, entry)
  if #body == 0 then
    redis.call('XACK', queue, group, entry)
  else
    local id = body[1][2][2]
    local lease = tonumber(redis.call('HGET', tag .. ':job:' .. id, 'lease_until') or '0')
    if lease <= now then
      redis.call('XCLAIM', queue, group, ARGV[4], 0, entry)
      take(entry, id)
    end
  end
end
-- New entries; ended ones are skipped without using up the batch.
while #jobs < max do
  local read = redis.call('XREADGROUP', 'GROUP', group, ARGV[4], 'COUNT', max - #jobs,
    'STREAMS', queue, '>')
  if not read or #read[1][2] == 0 then break end
  for _, e in ipairs(read[1][2]) do take(e[1], e[2][2]) end
end
return {jobs, expired, failed}
