-- Hand a Telegram chat a code. KEYS: update, rules, target (the chat's hash, whose
-- sends count here as create.lua's do), link (by code hash), chat (the chat's current
-- code), queue, job.
-- ARGV: now, expires_at, hash (hex), chat id, default target rules,
-- delivery id, payload, retention (ms), how long a handled update is remembered (ms),
-- key tag, has update ('1'/'0').
local now, expires, tag = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[10]
local function mark_handled()
  if ARGV[11] == '1' then redis.call('SET', KEYS[1], '1', 'PX', ARGV[9]) end
end
if ARGV[11] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return {'handled'} end
local rules = rules_from(redis.call('HGET', KEYS[2], 'target') or ARGV[5])
local target = redis.call('HMGET', KEYS[3], 'sends', 'expires')
local hit = sends_hit(target[1], rules, now)
if hit then
  mark_handled()
  return {'limited', 'target', hit[1], hit[2], hit[3]}
end
-- "chat id|expires_at" under the code's hash: taken while live.
local holder = redis.call('GET', KEYS[4])
if holder and tonumber(string.match(holder, '|(%d+)$')) > now then return {'taken'} end
-- A chat has one live code; a reply of the old one still waiting must not arrive late.
local previous = redis.call('GET', KEYS[5])
if previous then
  local old_hash, old_id = string.match(previous, '^(%x+)|(.+)$')
  local old_link = tag .. ':link:' .. old_hash
  -- Only if it is still this chat's: the same digits may have gone to another chat since.
  local old_holder = redis.call('GET', old_link)
  if old_holder and string.sub(old_holder, 1, #ARGV[4] + 1) == ARGV[4] .. '|' then
    redis.call('DEL', old_link)
  end
  local old_job = tag .. ':job:' .. old_id
  if redis.call('HGET', old_job, 'state') == 'queued' then
    redis.call('HSET', old_job, 'state', 'failed', 'updated_at', ARGV[1],
      'error', 'replaced by a newer code for the same chat')
    redis.call('PEXPIRE', old_job, ARGV[8])
    redis.call('HDEL', old_job, 'msg')
    redis.call('ZREM', tag .. ':unfinished', old_id)
  end
end
redis.call('SET', KEYS[4], ARGV[4] .. '|' .. ARGV[2], 'PX', ttl(expires, now))
redis.call('SET', KEYS[5], ARGV[3] .. '|' .. ARGV[6], 'PX', ttl(expires, now))
write_target(KEYS[3], {'sends', sends_after(target[1], rules, now)}, target[2],
  now + longest_window(rules), now)
enqueue(KEYS[6], KEYS[7], ARGV[6], ARGV[4], ARGV[7], now, ARGV[1], ARGV[2], tonumber(ARGV[8]))
mark_handled()
return {'created'}
