-- Reserve budget for one decision: walk the ranked candidates, award the first k that fit every
-- limit, count exactly those. All keys share the budget hash tag (one Cluster slot).
--
-- KEYS[1] totals hash   KEYS[2] today's hash   KEYS[3] this hour's hash
-- ARGV: k, day_ttl, hour_ttl, n, then per candidate: offer_id, m, then m x (key, field, limit, incr)
--       (key is 1..3; limit -1 = count only)
-- Returns {n_awarded, awarded offer ids..., then per refused candidate: offer_id, check no, used}
-- Every check runs before the first write, so a refused call changes nothing.
local k = tonumber(ARGV[1])
local n = tonumber(ARGV[4])
local pending = {} -- increments of this call not yet written, so two offers of one campaign add up
local awarded, refused, writes = {}, {}, {}
local at = 5
for _ = 1, n do
  local offer = ARGV[at]
  local m = tonumber(ARGV[at + 1])
  at = at + 2
  if #awarded < k then
    local failed, failed_used = 0, 0
    for j = 1, m do
      local base = at + 4 * (j - 1)
      local key, field = KEYS[tonumber(ARGV[base])], ARGV[base + 1]
      local limit, incr = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
      if limit >= 0 then
        local slot = key .. '\0' .. field
        local used = tonumber(redis.call('HGET', key, field) or '0') + (pending[slot] or 0)
        if used + incr > limit then
          failed, failed_used = j, used
          break
        end
      end
    end
    if failed == 0 then
      awarded[#awarded + 1] = offer
      for j = 1, m do
        local base = at + 4 * (j - 1)
        local key, field = KEYS[tonumber(ARGV[base])], ARGV[base + 1]
        local slot = key .. '\0' .. field
        local incr = tonumber(ARGV[base + 3])
        pending[slot] = (pending[slot] or 0) + incr
        writes[#writes + 1] = {key, field, incr}
      end
    else
      refused[#refused + 1] = offer
      refused[#refused + 1] = failed
      refused[#refused + 1] = failed_used
    end
  end
  at = at + 4 * m
end

-- writes
local touched = {}
for _, w in ipairs(writes) do
  if w[3] ~= 0 then
    redis.call('HINCRBY', w[1], w[2], w[3])
  end
  touched[w[1]] = true
end
if touched[KEYS[2]] then
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
if touched[KEYS[3]] then
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
local out = {#awarded}
for _, offer in ipairs(awarded) do
  out[#out + 1] = offer
end
for _, x in ipairs(refused) do
  out[#out + 1] = x
end
return out
