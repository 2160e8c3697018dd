-- Award offers of one decision atomically, walking the ranked candidates.
-- Every key is tagged with the customer, except budget counters (one per budgeted offer).
--
-- KEYS[1] sent-zset of the customer on the channel   KEYS[2] request-id key (may be unused)
-- KEYS[3] decision key                               KEYS[4..] budget counters
-- ARGV: now, window_s, k, channel_cap (-1 = none), decision_id, decision_ttl, request_ttl,
--       has_request (0/1), history_ttl, channel, n, then n x (offer_id, budget_key_index, budget_cap)
-- Returns {1, decision_id, n_awarded, awarded..., exhausted...}, {2, existing_decision_id} on a
-- repeated request id, or {3, decision_id, 0} when the channel cap is already used up.
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local k = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local decision_id = ARGV[5]
local has_request = ARGV[8] == '1'
local n = tonumber(ARGV[11])

if has_request then
  local existing = redis.call('GET', KEYS[2])
  if existing then
    return {2, existing}
  end
end

-- checks first: the channel cap, then each budget, before any write
local status = 1
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if cap >= 0 then
  local room = cap - redis.call('ZCARD', KEYS[1])
  if room <= 0 and n > 0 then
    status = 3
  end
  if room < k then
    k = room
  end
end
local awarded, exhausted = {}, {}
local budget_hits = {}
if k > 0 then
  for i = 0, n - 1 do
    local offer = ARGV[12 + 3 * i]
    local bk = tonumber(ARGV[13 + 3 * i])
    local ok = true
    if bk > 0 then
      local used = tonumber(redis.call('GET', KEYS[bk]) or '0')
      if used >= tonumber(ARGV[14 + 3 * i]) then
        ok = false
        exhausted[#exhausted + 1] = offer
      else
        budget_hits[#budget_hits + 1] = bk
      end
    end
    if ok then
      awarded[#awarded + 1] = offer
      if #awarded >= k then
        break
      end
    end
  end
end

-- writes
for _, bk in ipairs(budget_hits) do
  redis.call('INCR', KEYS[bk])
end
for _, offer in ipairs(awarded) do
  redis.call('ZADD', KEYS[1], now, decision_id .. ':' .. offer)
end
if #awarded > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[9])
end
redis.call('HSET', KEYS[3], 'offers', table.concat(awarded, ','), 'channel', ARGV[10], 'ts', ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[6])
if has_request then
  redis.call('SET', KEYS[2], decision_id, 'EX', ARGV[7])
end
local out = {status, decision_id, #awarded}
for _, offer in ipairs(awarded) do
  out[#out + 1] = offer
end
for _, offer in ipairs(exhausted) do
  out[#out + 1] = offer
end
return out
