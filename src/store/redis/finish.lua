-- Record how an attempt ended. KEYS: job, history, queue, delayed.
-- ARGV: attempt, state, provider, message id, error, next attempt at, now, retention,
-- delivery id, then one history entry (JSON) per provider asked.
-- Returns 0 when the job's lease was taken over meanwhile (nothing is written).
local job = KEYS[1]
local held = redis.call('HMGET', job, 'state', 'attempts', 'entry')
if held[1] ~= 'sending' or held[2] ~= ARGV[1] then
  return 0
end
local entry = held[3]
-- Claimed by an earlier otpd, which kept leases in the stream's consumer group.
if entry then
  redis.call('XACK', KEYS[3], 'workers', entry)
  redis.call('XDEL', KEYS[3], entry)
end
-- One write of the fields set and one of those cleared (each call costs more than its
-- fields).
local set, clear = {'state', ARGV[2], 'updated_at', ARGV[7]}, {'lease_until', 'entry'}
if ARGV[3] ~= '' then table.insert(set, 'provider'); table.insert(set, ARGV[3]) end
if ARGV[4] ~= '' then
  table.insert(set, 'provider_message_id'); table.insert(set, ARGV[4])
else
  table.insert(clear, 'provider_message_id')
end
if ARGV[5] ~= '' then
  table.insert(set, 'error'); table.insert(set, ARGV[5])
else
  table.insert(clear, 'error')
end
if ARGV[2] == 'queued' then
  table.insert(set, 'next_attempt_at'); table.insert(set, ARGV[6])
else
  -- The message held the code: it goes with the job's end.
  table.insert(clear, 'msg')
end
redis.call('HDEL', job, unpack(clear))
redis.call('HSET', job, unpack(set))
if #ARGV >= 10 then
  -- The first 10 entries and the latest 40 (outbox::cap_history).
  local kept = redis.call('RPUSH', KEYS[2], unpack(ARGV, 10))
  while kept > 50 do
    redis.call('LSET', KEYS[2], 10, '\0drop')
    redis.call('LREM', KEYS[2], 1, '\0drop')
    kept = kept - 1
  end
end
-- The job's lease in the delayed set (see claim.lua) becomes its retry's due time, or
-- goes with its end.
if ARGV[2] == 'queued' then
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[9])
  redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', job))
else
  redis.call('ZREM', KEYS[4], ARGV[9])
  redis.call('ZREM', unfinished_of(KEYS[3]), ARGV[9])
  redis.call('PEXPIRE', job, ARGV[8])
  redis.call('PEXPIRE', KEYS[2], ARGV[8])
end
return 1
