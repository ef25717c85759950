-- Create a code. KEYS: rules, ip sends, target, queue, job. ARGV: now, expires_at,
-- max_active, hash (hex), has_ip, send member, default target rules (JSON), delivery
-- id, channel, target, payload, retention (ms), the lease ('' unless the job is handed
-- to its worker at once, see enqueue), and the budget's limit when the budget is on.
--
-- A target's hash holds all that is kept of it, so that a create reads it once and
-- writes it once: its live codes ('codes': "hash:expires_at" entries, newest first,
-- comma-separated), its recent sends ('sends', see sends_hit), the round of guesses
-- since its last send ('failures', 'burned', 'until') and its wrong-guess budget
-- ('spent', 'spent_until', which a send does not reset), see check.lua, and until when
-- the hash lives ('expires', see outliving).
local now, expires = tonumber(ARGV[1]), tonumber(ARGV[2])
local held = redis.call('HMGET', KEYS[3], 'codes', 'sends', 'spent', 'spent_until', 'expires')
local spent, spent_until = running(held[3], held[4], now)
if ARGV[14] and spent >= tonumber(ARGV[14]) then return {'failure_budget', spent_until} end
local stored = redis.call('HMGET', KEYS[1], 'ip', 'target')
local ip_rules = rules_from(stored[1])
local target_rules = rules_from(stored[2] or ARGV[7])
if #ip_rules > 0 then
  if ARGV[5] ~= '1' then return {'ip_required'} end
  local hit = limit_hit(KEYS[2], ip_rules, now)
  if hit then return {'limited', 'ip', hit[1], hit[2], hit[3]} end
end
local hit = sends_hit(held[2], target_rules, now)
if hit then return {'limited', 'target', hit[1], hit[2], hit[3]} end

-- The new code, then the live ones kept, at most max_active in all.
local codes, kept, latest = {ARGV[4] .. ':' .. ARGV[2]}, 1, expires
for entry, until_ in string.gmatch(held[1] or '', '(%x+:(%d+))') do
  local ends = tonumber(until_)
  if ends > now and kept < tonumber(ARGV[3]) then
    kept = kept + 1
    codes[kept] = entry
    latest = math.max(latest, ends)
  end
end
-- A new send starts a new round of guesses ('until' past); the budget goes on.
local fields = {'codes', table.concat(codes, ','), 'sends', sends_after(held[2], target_rules, now),
  'until', '0'}
local needed = math.max(latest, now + longest_window(target_rules), spent_until or 0)
local longer, lifetime = outliving(held[5], needed, now)
for _, f in ipairs(longer) do table.insert(fields, f) end
redis.call('HSET', KEYS[3], unpack(fields))
if lifetime then redis.call('PEXPIRE', KEYS[3], lifetime) end
if ARGV[5] == '1' then record(KEYS[2], ip_rules, now, ARGV[6]) end
local lease_until = ARGV[13] ~= '' and ARGV[13] or nil
enqueue(KEYS[4], KEYS[5], ARGV[8], ARGV[9], ARGV[10], ARGV[11], now, ARGV[1], ARGV[2],
  tonumber(ARGV[12]), lease_until)
return {'created'}
