-- Commit one decision's awards on the customer's side, atomically: re-check the channel cap and
-- the per-customer award caps (a concurrent decision for the same customer may have used them
-- since the read), record the contacts, the decision and the request id. One customer's keys
-- only (one Cluster slot); budgets were reserved before by reserve.lua. The decision key is
-- written only when something was awarded: nothing else can receive an outcome, and a decision
-- that awarded nothing keeps no long-lived state (its answer, kept for a request id, expires
-- with the request id: server.pipeline.record).
--
-- KEYS[1] sent-zset of the channel   KEYS[2] request-id key (may be unused)
-- KEYS[3] decision key               KEYS[4] contacts hash
-- ARGV: now, window_s, channel_cap (-1 = none), decision_id, decision_ttl, request_ttl,
--       request value ("<decision_id> <request fingerprint>"; '' = no request id), history_ttl,
--       channel, n, may_retry (0/1), caller,
--       then n x (offer, campaign, offer_cap, campaign_cap, "propensity,prior sd,max value[,inputs]")
-- The decision key keeps each awarded offer's propensity, prior sd, outcome-value bound and arm inputs
-- (`p:<offer>`), so an outcome can be checked and learned from without the decision log or the
-- catalog of the day, and the caller that made it (only it, or an admin, may report on it).
-- Returns {1, decision_id, n_committed, committed..., then per refused offer: offer, why}
-- (why: 1 channel cap, 2 offer's per-customer cap, 3 campaign's per-customer cap), or
-- {2, request key's value} when the request id was already decided, or, when may_retry and a
-- per-customer cap refused every pick, {3, decision_id, 0, refused...} having written nothing,
-- so the caller can try the next candidates.
local now = tonumber(ARGV[1])
local cap = tonumber(ARGV[3])
local decision_id = ARGV[4]
local has_request = ARGV[7] ~= ''
local n = tonumber(ARGV[10])
local may_retry = ARGV[11] == '1'

if has_request then
  local existing = redis.call('GET', KEYS[2])
  if existing then
    return {2, existing}
  end
end

-- checks, before any write
local room = -1
if cap >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
  room = cap - redis.call('ZCARD', KEYS[1])
end
local counts = {}
local function count(field)
  if counts[field] == nil then
    counts[field] = tonumber(redis.call('HGET', KEYS[4], field) or '0')
  end
  return counts[field]
end
local committed, refused = {}, {}
local n_ok = 0
for i = 0, n - 1 do
  local offer, campaign = ARGV[13 + 5 * i], ARGV[14 + 5 * i]
  local propensity = ARGV[17 + 5 * i]
  local offer_cap, campaign_cap = tonumber(ARGV[15 + 5 * i]), tonumber(ARGV[16 + 5 * i])
  local fo, fc = 'a:o:' .. offer, 'a:c:' .. campaign
  local why = 0
  if cap >= 0 and n_ok >= room then
    why = 1
  elseif offer_cap >= 0 and count(fo) + 1 > offer_cap then
    why = 2
  elseif campaign_cap >= 0 and count(fc) + 1 > campaign_cap then
    why = 3
  end
  if why == 0 then
    n_ok = n_ok + 1
    committed[#committed + 1] = offer
    committed[#committed + 1] = {'p', offer, propensity}
    if offer_cap >= 0 or campaign_cap >= 0 then
      counts[fo] = count(fo) + 1
      counts[fc] = count(fc) + 1
      committed[#committed + 1] = {fo, fc}
    end
  else
    refused[#refused + 1] = offer
    refused[#refused + 1] = why
  end
end

if may_retry and n_ok == 0 and n > 0 then
  local customer_caps = false
  for i = 2, #refused, 2 do
    if refused[i] ~= 1 then
      customer_caps = true
    end
  end
  if customer_caps then
    local out = {3, decision_id, 0}
    for _, x in ipairs(refused) do
      out[#out + 1] = x
    end
    return out
  end
end

-- writes
local offers = {}
local capped_awards = false
local propensities = {}
for _, c in ipairs(committed) do
  if type(c) == 'table' and c[1] == 'p' then
    propensities[#propensities + 1] = 'p:' .. c[2]
    propensities[#propensities + 1] = c[3]
  elseif type(c) == 'table' then
    redis.call('HINCRBY', KEYS[4], c[1], 1)
    redis.call('HINCRBY', KEYS[4], c[2], 1)
    capped_awards = true
  else
    offers[#offers + 1] = c
    -- the member only has to be unique: the id's ULID (its first 26 characters) and the offer
    -- keep it within zset-max-listpack-value (64 bytes) for offer ids up to 37 characters; the
    -- whole sealed id would not fit, and a set past that limit costs ten times the memory
    redis.call('ZADD', KEYS[1], now, string.sub(decision_id, 1, 26) .. ':' .. c)
  end
end
if #offers > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[8])
end
if capped_awards then
  redis.call('EXPIRE', KEYS[4], ARGV[8])
end
if #offers > 0 then
  redis.call('HSET', KEYS[3], 'offers', table.concat(offers, ','), 'channel', ARGV[9], 'ts', ARGV[1],
    'caller', ARGV[12], unpack(propensities))
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
if has_request then
  redis.call('SET', KEYS[2], ARGV[7], 'EX', ARGV[6])
end
local out = {1, decision_id, #offers}
for _, offer in ipairs(offers) do
  out[#out + 1] = offer
end
for _, x in ipairs(refused) do
  out[#out + 1] = x
end
return out
