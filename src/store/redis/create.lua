-- Create a code. KEYS: rules, ip sends, target sends, codes, guesses (which also holds
-- the target's wrong-guess budget, see check.lua), queue, job, msg. ARGV: now,
-- expires_at, max_active, hash (hex), has_ip, send member, default target rules (JSON),
-- delivery id, channel, target, payload, retention (ms), the lease ('' unless the job is
-- handed to its worker at once, see enqueue), and the budget's limit when the budget is
-- on.
local now, expires = tonumber(ARGV[1]), tonumber(ARGV[2])
-- Whether the target has a round of guesses to end; unknown unless the budget is read.
local round = true
if ARGV[14] then
  -- The budget lives in the guesses hash (see check.lua), beside the round.
  local held = redis.call('HMGET', KEYS[5], 'spent', 'spent_until', 'until')
  local spent, resets_at = running(held[1], held[2], now)
  if spent >= tonumber(ARGV[14]) then return {'failure_budget', resets_at} end
  round = held[3] ~= false
end
local stored = redis.call('HMGET', KEYS[1], 'ip', 'target')
local ip_rules = rules_from(stored[1])
local target_rules = rules_from(stored[2] or ARGV[7])
if #ip_rules > 0 then
  if ARGV[5] ~= '1' then return {'ip_required'} end
  local hit = limit_hit(KEYS[2], ip_rules, now)
  if hit then return {'limited', 'ip', hit[1], hit[2], hit[3]} end
end
local hit = limit_hit(KEYS[3], target_rules, now)
if hit then return {'limited', 'target', hit[1], hit[2], hit[3]} end

-- Live codes, newest first, at most max_active: "hash:expires_at".
local kept, latest = {ARGV[4] .. ':' .. ARGV[2]}, expires
local held = redis.call('LRANGE', KEYS[4], 0, -1)
for _, entry in ipairs(held) do
  local until_ = tonumber(string.sub(entry, 66))
  if until_ > now and #kept < tonumber(ARGV[3]) then
    table.insert(kept, entry)
    latest = math.max(latest, until_)
  end
end
if #held > 0 then redis.call('DEL', KEYS[4]) end
redis.call('RPUSH', KEYS[4], unpack(kept))
redis.call('PEXPIRE', KEYS[4], ttl(latest, now))
-- A new send starts a new round of guesses; the budget goes on.
if round then redis.call('HDEL', KEYS[5], 'failures', 'burned', 'until') end
if ARGV[5] == '1' then record(KEYS[2], ip_rules, now, ARGV[6]) end
record(KEYS[3], target_rules, now, ARGV[6])
local lease_until = ARGV[13] ~= '' and ARGV[13] or nil
enqueue(KEYS[6], KEYS[7], KEYS[8], ARGV[8], ARGV[9], ARGV[10], ARGV[11], now, expires,
  tonumber(ARGV[12]), lease_until)
return {'created'}
