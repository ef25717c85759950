-- Check a code, per domain::verification::decide_check. KEYS: codes, guesses, and the
-- target's failure budget when it is on. ARGV: now, hash (hex), max_attempts, then the
-- budget's limit and the resets_at of a window this check would start. The hashes are
-- keyed HMACs, so comparing them in plain Lua tells a timing attacker nothing about the
-- code.
local now = tonumber(ARGV[1])

local function decide()
  local guesses = redis.call('HMGET', KEYS[2], 'failures', 'burned', 'until')
  local failures = 0
  if guesses[3] and tonumber(guesses[3]) > now then
    if guesses[2] == '1' then return 'attempts_exceeded' end
    failures = tonumber(guesses[1])
  end
  local live, latest = 0, 0
  for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    local until_ = tonumber(string.sub(entry, 66))
    if until_ > now then
      if string.sub(entry, 1, 64) == ARGV[2] then
        redis.call('DEL', KEYS[1], KEYS[2])
        return 'verified'
      end
      live = live + 1
      latest = math.max(latest, until_)
    end
  end
  if live == 0 then return 'invalid_password' end
  failures = failures + 1
  local burned = failures >= tonumber(ARGV[3])
  redis.call('HSET', KEYS[2], 'failures', failures, 'burned', burned and '1' or '0', 'until', latest)
  redis.call('PEXPIRE', KEYS[2], ttl(latest, now))
  if burned then redis.call('DEL', KEYS[1]) end
  return 'invalid_password'
end

local budget = KEYS[3]
if not budget then return decide() end
local spent, running = counted(budget, now)
if spent >= tonumber(ARGV[4]) then return 'attempts_exceeded' end
local outcome = decide()
if outcome == 'invalid_password' then
  count_one(budget, running, tonumber(ARGV[5]), now)
elseif outcome == 'verified' and spent > 0 then
  -- The budget is of consecutive failures (NIST SP 800-63B): a success ends it.
  redis.call('DEL', budget)
end
return outcome
