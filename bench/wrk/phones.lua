-- One request per phone: "<prefix><7 digits>" (a valid number: see bench.py), each wrk thread in its own block of
-- `stride` numbers, so requests never repeat a phone, unless `wrap` is given: then each thread goes round its first
-- `wrap` numbers again (wrong-code checks may ask twice per code: a second wrong guess is still recorded as one).
-- args: method path prefix stride password [wrap]
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  method, path, prefix = args[1], args[2], args[3]
  stride, password, n = tonumber(args[4]), args[5], 0
  wrap = tonumber(args[6] or "0")
end

function request()
  local i = n
  if wrap > 0 then i = n % wrap end
  local phone = prefix .. string.format("%07d", tid * stride + i)
  n = n + 1
  local body = '{"phone":"' .. phone .. '","password":"' .. password .. '"}'
  return wrk.format(method, path, {["Content-Type"] = "application/json"}, body)
end
