-- Replace some limit rules, answer those in force. KEYS: rules.
-- ARGV: ip rules JSON or '', target rules JSON or ''.
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'ip', ARGV[1]) end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'target', ARGV[2]) end
return redis.call('HMGET', KEYS[1], 'ip', 'target')
