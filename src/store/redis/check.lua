-- Check a code, per domain::verification::decide_check. KEYS: codes, guesses. ARGV: now,
-- hash (hex), max_attempts, then, when the wrong-guess budget is on, its limit and the
-- resets_at of a window this check would start. The guesses hash holds the round of
-- guesses since the last send ('failures', 'burned', 'until') and the budget ('spent',
-- 'spent_until', which a send does not reset), so that a check reads one hash and a
-- wrong guess writes it once. The hashes are keyed HMACs, so comparing them in plain
-- Lua tells a timing attacker nothing about the code.
local now = tonumber(ARGV[1])
local held = redis.call('HMGET', KEYS[2], 'failures', 'burned', 'until', 'spent',
  'spent_until')
local budget = ARGV[4] and tonumber(ARGV[4])
local spent, spent_until = running(held[4], held[5], now)
if budget and spent >= budget then return 'attempts_exceeded' end

local failures, round_until = 0, nil
if held[3] and tonumber(held[3]) > now then
  if held[2] == '1' then return 'attempts_exceeded' end
  failures, round_until = tonumber(held[1]), tonumber(held[3])
end
local live, latest = 0, 0
for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local until_ = tonumber(string.sub(entry, 66))
  if until_ > now then
    if string.sub(entry, 1, 64) == ARGV[2] then
      -- The round ends, and so does the budget: it is of consecutive failures (NIST SP
      -- 800-63B), and a success ends it.
      redis.call('DEL', KEYS[1], KEYS[2])
      return 'verified'
    end
    live = live + 1
    latest = math.max(latest, until_)
  end
end

-- A wrong password: counted in the round when a code was live, and in the budget.
local set, burned = {}, false
if live > 0 then
  failures = failures + 1
  burned = failures >= tonumber(ARGV[3])
  round_until = latest
  set = {'failures', failures, 'burned', burned and '1' or '0', 'until', latest}
end
if budget then
  if not spent_until then spent_until = tonumber(ARGV[5]) end
  table.insert(set, 'spent'); table.insert(set, spent + 1)
  table.insert(set, 'spent_until'); table.insert(set, spent_until)
end
if #set > 0 then
  redis.call('HSET', KEYS[2], unpack(set))
  -- As long as the longer of the two lives.
  redis.call('PEXPIRE', KEYS[2], ttl(math.max(round_until or 0, spent_until or 0), now))
end
if burned then redis.call('DEL', KEYS[1]) end
return 'invalid_password'
