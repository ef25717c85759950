-- Create codes, one after the other (a batch: see batch.rs), each answered in turn.
-- KEYS, per code: rules, ip sends, target, queue, job. ARGV, per code: now, expires_at,
-- max_active, hash (hex), has_ip, send member, default target rules (JSON), delivery
-- id, target, payload, retention (ms), the lease ('' unless the job is handed
-- to its worker at once, see enqueue), and the budget's limit ('' when it is off).
--
-- A target's hash holds all that is kept of it, so that a create reads it once and
-- writes it once: its live codes ('codes': "hash:expires_at" entries, newest first,
-- comma-separated), its recent sends ('sends', see sends_hit), the round of guesses
-- since its last send ('failures', 'burned', 'until') and its wrong-guess budget
-- ('spent', 'spent_until', which a send does not reset), see check.lua, and until when
-- the hash lives ('expires', see write_target).
local function create(K, A)
  local now, expires = tonumber(A[1]), tonumber(A[2])
  local held = redis.call('HMGET', K[3], 'codes', 'sends', 'spent', 'spent_until',
    'expires')
  local spent, spent_until = running(held[3], held[4], now)
  if A[13] ~= '' and spent >= tonumber(A[13]) then
    return {'failure_budget', spent_until}
  end
  local stored = redis.call('HMGET', K[1], 'ip', 'target')
  local ip_rules = rules_from(stored[1])
  local target_rules = rules_from(stored[2] or A[7])
  if #ip_rules > 0 then
    if A[5] ~= '1' then return {'ip_required'} end
    local hit = limit_hit(K[2], ip_rules, now)
    if hit then return {'limited', 'ip', hit[1], hit[2], hit[3]} end
  end
  local hit = sends_hit(held[2], target_rules, now)
  if hit then return {'limited', 'target', hit[1], hit[2], hit[3]} end

  -- The new code, then the live ones kept, at most max_active in all.
  local codes, kept, latest = {A[4] .. ':' .. A[2]}, 1, expires
  for entry, until_ in string.gmatch(held[1] or '', '(%x+:(%d+))') do
    local ends = tonumber(until_)
    if ends > now and kept < tonumber(A[3]) then
      kept = kept + 1
      codes[kept] = entry
      latest = math.max(latest, ends)
    end
  end
  -- A new send starts a new round of guesses ('until' past); the budget goes on.
  local fields = {'codes', table.concat(codes, ','),
    'sends', sends_after(held[2], target_rules, now), 'until', '0'}
  local needed = math.max(latest, now + longest_window(target_rules), spent_until or 0)
  write_target(K[3], fields, held[5], needed, now)
  if A[5] == '1' then record(K[2], ip_rules, now, A[6]) end
  local lease_until = A[12] ~= '' and A[12] or nil
  enqueue(K[4], K[5], A[8], A[9], A[10], now, A[1], A[2], tonumber(A[11]), lease_until)
  return {'created'}
end

return each(5, 13, create)
