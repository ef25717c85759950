-- One request per phone: "<prefix><7 digits>" (a valid number: see bench.py), each wrk thread in its own block of
-- `stride` numbers, so requests never repeat a phone.
-- args: method path prefix stride password
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  method, path, prefix = args[1], args[2], args[3]
  stride, password, n = tonumber(args[4]), args[5], 0
end

function request()
  local phone = prefix .. string.format("%07d", tid * stride + n)
  n = n + 1
  local body = '{"phone":"' .. phone .. '","password":"' .. password .. '"}'
  return wrk.format(method, path, {["Content-Type"] = "application/json"}, body)
end
