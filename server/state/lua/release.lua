-- Give back reservations the customer-side commit refused (a race on the customer's caps or a
-- request_id repeat), so that exactly the awards returned stay counted. Budget slot only.
-- KEYS as reserve.lua; ARGV: m, then m x (key, field, incr)
local m = tonumber(ARGV[1])
for j = 0, m - 1 do
  local incr = tonumber(ARGV[4 + 3 * j])
  if incr ~= 0 then
    redis.call('HINCRBY', KEYS[tonumber(ARGV[2 + 3 * j])], ARGV[3 + 3 * j], -incr)
  end
end
return m
