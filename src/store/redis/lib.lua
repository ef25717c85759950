#!lua
-- The shebang makes Redis check memory before a script runs: a script refused for lack
-- of memory must not half-run (a wrong guess uncounted while a right one passes).
-- Shared by every script (prepended to each): limit checks and send records, mirroring
-- domain::limits::RuleSet::check. Times are milliseconds from the application's clock
-- (ARGV), never the server's, so that every replica and every test agree.

local function rules_from(raw)
  if not raw or raw == '' then return {} end
  return cjson.decode(raw)
end

-- The refusal {minutes, rate, retry_after_secs} of the strictest rule broken, or nil.
-- `blocking(rule, window)` gives the send that a broken rule's window must pass before
-- it allows another (the rate-th most recent), or nil when the rule is not broken.
local function strictest(rules, now, blocking)
  local worst = nil
  for _, rule in ipairs(rules) do
    local window = rule.minutes * 60000
    local at = blocking(rule, window)
    if at then
      local retry = math.max(1, math.ceil((at + window - now) / 1000))
      -- On a tie the later rule is named, as RuleSet::check does.
      if worst == nil or retry >= worst[3] then
        worst = {rule.minutes, rule.rate, retry}
      end
    end
  end
  return worst
end

-- The refusal of the strictest rule that the sends recorded under `key` (a sorted set
-- by time) break, or nil.
local function limit_hit(key, rules, now)
  return strictest(rules, now, function(rule, window)
    local recent = redis.call('ZREVRANGEBYSCORE', key, '+inf', '(' .. (now - window),
      'WITHSCORES', 'LIMIT', 0, rule.rate)
    if #recent / 2 >= rule.rate then return tonumber(recent[rule.rate * 2]) end
  end)
end

-- Never less than the default rule's 10 minutes, so that a rule added later finds the
-- recent sends (as the SQLite store keeps them).
local function longest_window(rules)
  local longest = 600000
  for _, rule in ipairs(rules) do
    longest = math.max(longest, rule.minutes * 60000)
  end
  return longest
end

-- Records a send (or a failure) at `now`; what no rule can count any more goes.
local function record(key, rules, now, member)
  local keep = longest_window(rules)
  redis.call('ZADD', key, now, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - keep)
  redis.call('PEXPIRE', key, keep)
end

-- Lifetimes are given to Redis relative to now (both from the application's clock), so
-- a server whose clock differs from the replicas' never expires anything early.
local function ttl(until_, now)
  return math.max(1, until_ - now)
end

-- A target's sends are kept in its hash (see create.lua) as one field: their times,
-- oldest first, comma-separated. The refusal of the strictest rule they break, or nil.
local function sends_hit(raw, rules, now)
  if not raw or raw == '' then return nil end
  local times = {}
  for at in string.gmatch(raw, '%d+') do table.insert(times, tonumber(at)) end
  return strictest(rules, now, function(rule, window)
    local recent = 0
    for i = #times, 1, -1 do
      if times[i] <= now - window then break end
      recent = recent + 1
    end
    if recent >= rule.rate then return times[#times - rule.rate + 1] end
  end)
end

-- The sends field with a send at `now` added, kept in order (replicas' clocks may differ
-- by a little), and what no rule can count any more gone.
local function sends_after(raw, rules, now)
  local oldest = now - longest_window(rules)
  local kept = {}
  for t in string.gmatch(raw or '', '%d+') do
    if tonumber(t) > oldest then table.insert(kept, tonumber(t)) end
  end
  local at = #kept + 1
  while at > 1 and kept[at - 1] > now do at = at - 1 end
  table.insert(kept, at, now)
  return table.concat(kept, ',')
end

-- Writes `fields` to a target's hash `key`, which lives as long as what it holds that
-- lives longest: its field 'expires' says until when (`held_expires`, as read), so that
-- a write that needs it kept until `needed` can tell without a PTTL call, and one that
-- needs less never shortens it.
local function write_target(key, fields, held_expires, needed, now)
  local current = tonumber(held_expires or '0')
  local longer = current <= now or current < needed
  if longer then
    table.insert(fields, 'expires'); table.insert(fields, needed)
  end
  redis.call('HSET', key, unpack(fields))
  if longer then redis.call('PEXPIRE', key, ttl(needed, now)) end
end

-- The key `name` of the channel whose queue is `queue` ("<tag>:queue").
local function beside(queue, name)
  return string.sub(queue, 1, -6) .. name
end

-- The jobs not yet ended, by creation time (queue depth and age for the metrics).
local function unfinished_of(queue)
  return beside(queue, 'unfinished')
end

-- Puts a job in the outbox: its hash, which holds its message ('msg') until the job
-- ends, and its stream entry. A job handed to its worker at once (`lease_until` given)
-- is written as a claim would leave it, with no stream entry: it waits in the delayed
-- set until its lease ends, and is taken again from there should its worker die before
-- finishing it. `at`: now, as the text it arrived as (Lua prints numbers with printf).
-- Every field written costs Redis as much again in its append-only file, so a new job
-- has only those that say something: no attempts yet, and neither an update nor a next
-- attempt other than its creation (see status_of in mod.rs).
local function enqueue(queue, job, id, target, payload, now, at, expires, retention,
                       lease_until)
  local fields = {'target', target, 'created_at', at, 'expires_at', expires, 'msg', payload,
    'state', lease_until and 'sending' or 'queued'}
  if lease_until then
    table.insert(fields, 'attempts'); table.insert(fields, '1')
    table.insert(fields, 'lease_until'); table.insert(fields, lease_until)
  end
  redis.call('HSET', job, unpack(fields))
  redis.call('PEXPIRE', job, ttl(tonumber(expires), now) + retention)
  if lease_until then
    redis.call('ZADD', beside(queue, 'delayed'), lease_until, id)
  else
    redis.call('XADD', queue, '*', 'id', id)
  end
  redis.call('ZADD', unfinished_of(queue), at, id)
end

-- Ends a queued (or lapsed) job as expired: its code is worthless now, and its message
-- goes.
local function expire_job(job, now, retention)
  local last = redis.call('HGET', job, 'error')
  local why = 'the code expired before it could be delivered'
  if last then why = why .. ' (last error: ' .. last .. ')' end
  redis.call('HSET', job, 'state', 'expired', 'updated_at', now, 'error', why)
  redis.call('HDEL', job, 'lease_until', 'entry', 'msg')
  redis.call('PEXPIRE', job, retention)
  redis.call('ZREM', string.sub(job, 1, string.find(job, ':job:', 1, true) - 1) .. ':unfinished',
    string.sub(job, string.find(job, ':job:', 1, true) + 5))
end

-- A counter's value and its end, from the two fields stored for it; one past its end
-- counts as zero (and is not running: nil end), by the application's clock, as the
-- SQLite store does.
local function running(count, until_, now)
  if until_ and tonumber(until_) > now then return tonumber(count), tonumber(until_) end
  return 0, nil
end

-- Quotas and counters are hashes {count, resets_at}. (The wrong-guess budget is such a
-- counter kept in a target's guesses hash as 'spent' and 'spent_until'.)
local function counted(key, now)
  local state = redis.call('HMGET', key, 'count', 'resets_at')
  return running(state[1], state[2], now)
end

-- Counts one against a counter whatever its limit, given what `counted` read of it
-- (`ends`: its resets_at, nil when not running); one not running starts again, ending
-- at `resets_at`.
local function count_one(key, ends, resets_at, now)
  if ends then
    redis.call('HINCRBY', key, 'count', 1)
  else
    redis.call('HSET', key, 'count', 1, 'resets_at', resets_at)
    redis.call('PEXPIRE', key, ttl(resets_at, now))
  end
end

-- Runs `one` for each call of a batch (see batch.rs): KEYS and ARGV hold `keys` and
-- `args` entries per call, one call after the other. Returns the answers, in order; a
-- call that fails (damaged data) is answered {'failed', error}, and the others go on
-- (an error reply would fail the whole batch in the client).
local function each(keys, args, one)
  local answers = {}
  for i = 0, #KEYS / keys - 1 do
    -- Built whole by their constructors: filled one by one, they grow (and rehash) as
    -- they go, which cost Redis as much as a write (BENCHMARKS.md, finding 27).
    local K = {unpack(KEYS, i * keys + 1, (i + 1) * keys)}
    local A = {unpack(ARGV, i * args + 1, (i + 1) * args)}
    local done, answer = pcall(one, K, A)
    answers[i + 1] = done and answer or {'failed', tostring(answer)}
  end
  return answers
end
