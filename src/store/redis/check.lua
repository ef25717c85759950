-- Check codes, per domain::verification::decide_check, one after the other (a batch:
-- see batch.rs), each answered in turn. KEYS, per check: target (its hash, see
-- create.lua). ARGV, per check: now, hash (hex), max_attempts, then the wrong-guess
-- budget's limit and the resets_at of a window this check would start ('' and '' when
-- the budget is off). A check reads the target's hash once and writes it once. The
-- hashes are keyed HMACs, so comparing them in plain Lua tells a timing attacker
-- nothing about the code.
local function check(K, A)
  local now = tonumber(A[1])
  local held = redis.call('HMGET', K[1], 'codes', 'failures', 'burned', 'until', 'spent',
    'spent_until', 'expires')
  local budget = A[4] ~= '' and tonumber(A[4]) or nil
  local spent, spent_until = running(held[5], held[6], now)
  if budget and spent >= budget then return 'attempts_exceeded' end

  local failures, round_until = 0, nil
  if held[4] and tonumber(held[4]) > now then
    if held[3] == '1' then return 'attempts_exceeded' end
    failures, round_until = tonumber(held[2]), tonumber(held[4])
  end
  local live, latest = 0, 0
  for hash, until_ in string.gmatch(held[1] or '', '(%x+):(%d+)') do
    local ends = tonumber(until_)
    if ends > now then
      if hash == A[2] then
        -- The round ends, and so does the budget: it is of consecutive failures (NIST SP
        -- 800-63B), and a success ends it. The sends stay: they still count.
        redis.call('HDEL', K[1], 'codes', 'failures', 'burned', 'until', 'spent',
          'spent_until')
        return 'verified'
      end
      live = live + 1
      latest = math.max(latest, ends)
    end
  end

  -- A wrong password: counted in the round when a code was live, and in the budget.
  local set, burned = {}, false
  if live > 0 then
    failures = failures + 1
    burned = failures >= tonumber(A[3])
    round_until = latest
    set = {'failures', failures, 'burned', burned and '1' or '0', 'until', latest}
    -- Burned: the live codes go with the round.
    if burned then table.insert(set, 'codes'); table.insert(set, '') end
  end
  if budget then
    if not spent_until then spent_until = tonumber(A[5]) end
    table.insert(set, 'spent'); table.insert(set, spent + 1)
    table.insert(set, 'spent_until'); table.insert(set, spent_until)
  end
  if #set > 0 then
    write_target(K[1], set, held[7], math.max(round_until or 0, spent_until or 0), now)
  end
  return 'invalid_password'
end

return each(1, 5, check)
