-- Take due jobs of one channel. KEYS: queue (stream), delayed (by due time: retries
-- waiting, and the leases of jobs being sent). ARGV: now, lease_until, max, consumer,
-- key tag, retention (ms), step.
-- Returns {jobs, expired, failed, more}: {id, target, payload, attempts, expires_at,
-- created_at} per job taken, how many jobs this call ended itself, and 1 when it stopped
-- reading new entries after ending `step` jobs (more may be waiting), else 0.
--
-- A job being sent is a member of the delayed set, scored by its lease's end: when the
-- lease runs out (its worker died), it is due like a retry and taken again. The stream
-- only carries new jobs to whoever reads them first; entries are read without
-- acknowledgement (this script records the lease in the same atomic step) and trimmed
-- once read, so neither the read nor the finish pays for a consumer group's bookkeeping.
local now, max, tag = tonumber(ARGV[1]), tonumber(ARGV[3]), ARGV[5]
local queue, delayed, group, retention = KEYS[1], KEYS[2], 'workers', tonumber(ARGV[6])
local step = tonumber(ARGV[7])
-- Made here rather than once at start, so that a Redis that lost its data recovers.
redis.pcall('XGROUP', 'CREATE', queue, group, '0', 'MKSTREAM')

-- Entries an earlier otpd left pending (it kept leases in the consumer group): their
-- leases move to the delayed set, so that trimming the stream loses none of them.
for _, pending in ipairs(redis.call('XPENDING', queue, group, '-', '+', 1000)) do
  local body = redis.call('XRANGE', queue, pending[1], pending[1])
  if #body > 0 then
    local id = body[1][2][2]
    local lease = redis.call('HGET', tag .. ':job:' .. id, 'lease_until') or ARGV[1]
    redis.call('ZADD', delayed, lease, id)
  end
  redis.call('XACK', queue, group, pending[1])
end

local jobs, expired, failed = {}, 0, 0
-- Leases a job for sending, or ends one that has nothing left to send. `was_delayed`:
-- the id is a member of the delayed set (which a lease sets anew, and an end leaves).
local function take(id, was_delayed)
  local job = tag .. ':job:' .. id
  -- One read of every field the decision and the answer need.
  local fields = redis.call('HMGET', job, 'state', 'expires_at', 'target', 'created_at',
    'attempts', 'msg')
  local state, expires_at = fields[1], fields[2]
  if state ~= 'queued' and state ~= 'sending' then
    -- ended meanwhile (or gone): nothing to do
  elseif tonumber(expires_at) <= now then
    -- A code that has expired is worthless to its recipient: do not send it late.
    expire_job(job, now, retention)
    expired = expired + 1
  else
    -- Jobs queued by a version that kept messages under keys of their own have none.
    local payload = fields[6] or redis.call('GET', tag .. ':msg:' .. id)
    if payload then
      local attempts = tonumber(fields[5] or '0') + 1
      redis.call('HSET', job, 'state', 'sending', 'lease_until', ARGV[2], 'updated_at', now,
        'attempts', attempts)
      redis.call('ZADD', delayed, ARGV[2], id)
      table.insert(jobs, {id, fields[3], payload, tostring(attempts), expires_at, fields[4]})
      return
    end
    failed = failed + 1
    redis.call('ZREM', unfinished_of(queue), id)
    redis.call('HSET', job, 'state', 'failed', 'updated_at', now,
      'error', 'the stored job could not be read')
    redis.call('HDEL', job, 'lease_until', 'entry')
    redis.call('PEXPIRE', job, retention)
  end
  if was_delayed then redis.call('ZREM', delayed, id) end
end

-- Retries that came due, and jobs whose lease ran out, first: they waited longest.
for _, id in ipairs(redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, max)) do
  take(id, true)
end
-- New entries; ended ones are skipped without using up the batch, but at most `step`
-- of them per call: Redis answers nobody else while a script runs, and a backlog of
-- jobs whose codes expired (otpd stopped for longer than a code lives) would otherwise
-- all be ended in this one call.
local last
while #jobs < max and expired + failed < step do
  local read = redis.call('XREADGROUP', 'GROUP', group, ARGV[4], 'COUNT', max - #jobs,
    'NOACK', 'STREAMS', queue, '>')
  if not read or #read[1][2] == 0 then break end
  for _, e in ipairs(read[1][2]) do
    take(e[2][2], false)
    last = e[1]
  end
end
-- Every entry before the last one read has been read by some worker: none is needed.
if last then redis.call('XTRIM', queue, 'MINID', last) end
local more = 0
if #jobs < max and expired + failed >= step then more = 1 end
return {jobs, expired, failed, more}
