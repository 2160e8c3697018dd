-- Give back reservations that were not awarded after all (the customer-side commit refused them,
-- or the walk reserved more than the channel's capacity allowed), so that exactly the awards
-- returned stay counted. One slot, as reserve.lua.
-- A counter given back to 0 is removed, so a walk that awarded nothing leaves no trace.
-- KEYS as reserve.lua; ARGV: m, then m x (key no, field, incr)
local m = tonumber(ARGV[1])
for j = 0, m - 1 do
  local incr = tonumber(ARGV[4 + 3 * j])
  if incr ~= 0 then
    local key, field = KEYS[tonumber(ARGV[2 + 3 * j])], ARGV[3 + 3 * j]
    if redis.call('HINCRBY', key, field, -incr) == 0 then
      redis.call('HDEL', key, field)
    end
  end
end
return m
