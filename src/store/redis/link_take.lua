-- Trade a bot code for its chat id. KEYS: link (by code hash), then one failure record
-- per key that failures count against. ARGV: now, member, key tag, then per failure
-- key: minutes, rate. Returns {'found', chat} | {'not_found'} | {'limited', m, r, s}.
local now, tag = tonumber(ARGV[1]), ARGV[3]
local function rules_at(i)
  return {{minutes = tonumber(ARGV[2 + 2 * i]), rate = tonumber(ARGV[3 + 2 * i])}}
end
for i = 2, #KEYS do
  local hit = limit_hit(KEYS[i], rules_at(i - 1), now)
  if hit then return {'limited', hit[1], hit[2], hit[3]} end
end
local holder = redis.call('GET', KEYS[1])
if holder then
  local chat, until_ = string.match(holder, '^(.+)|(%d+)$')
  if tonumber(until_) > now then
    redis.call('DEL', KEYS[1], tag .. ':linkchat:' .. chat)
    return {'found', chat}
  end
end
for i = 2, #KEYS do record(KEYS[i], rules_at(i - 1), now, ARGV[2]) end
return {'not_found'}
