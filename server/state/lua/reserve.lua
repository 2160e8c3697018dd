-- Reserve budget in one slot: walk the ranked candidates, award the first k that fit every
-- limit, count exactly those. KEYS are hashes of one Cluster slot (a campaign's total and day
-- counters, or a channel's hour), so server.state.budget_walk calls this once per slot.
--
-- KEYS[1..K] counter hashes
-- ARGV: k, then K TTLs (seconds to EXPIRE a written key with; 0 = never expires), then n, then
--       per candidate: offer_id, m, then m x (key no, field, limit, incr)  (limit -1 = count only)
-- Returns {n_awarded, awarded offer ids..., then per refused candidate: offer_id, check no, used}
-- Every check runs before the first write, so a refused call changes nothing.
local k = tonumber(ARGV[1])
local nkeys = #KEYS
local n = tonumber(ARGV[nkeys + 2])
local pending = {} -- increments of this call not yet written, so two offers of one campaign add up
local awarded, refused, writes = {}, {}, {}
local at = nkeys + 3
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
        local key_no, field = tonumber(ARGV[base]), ARGV[base + 1]
        local slot = KEYS[key_no] .. '\0' .. field
        local incr = tonumber(ARGV[base + 3])
        pending[slot] = (pending[slot] or 0) + incr
        writes[#writes + 1] = {key_no, field, incr}
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
    redis.call('HINCRBY', KEYS[w[1]], w[2], w[3])
  end
  touched[w[1]] = true
end
for key_no = 1, nkeys do
  local ttl = tonumber(ARGV[key_no + 1])
  if touched[key_no] and ttl > 0 then
    redis.call('EXPIRE', KEYS[key_no], ttl)
  end
end
local out = {#awarded}
for _, offer in ipairs(awarded) do
  out[#out + 1] = offer
end
for _, x in ipairs(refused) do
  out[#out + 1] = x
end
return out
