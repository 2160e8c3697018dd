-- Record one outcome against a customer's contact history, once per event id.
-- KEYS[1] decision key   KEYS[2] event key   KEYS[3] contacts hash   (all one customer's slot)
-- ARGV: offer_id, outcome, now, event_ttl, max_presented, suppression_s, history_ttl, fingerprint,
--       caller, admin (0/1), value, fallback max value ('' = none)
-- Refused before anything is written, in this order: an unknown (or expired) decision; a caller
-- other than the one that made the decision, unless admin (a decision kept without a caller, or
-- made on an open server, is anyone's); an offer the decision did not award; a value above the
-- offer's bound kept with the decision (`p:<offer>` = "propensity,prior sd,max value[,inputs]"; the
-- fallback bound for decisions kept before bounds were).
-- The event key keeps the outcome's fingerprint, so a repeat is told from another outcome reusing
-- the event id; '1' (kept before fingerprints were) matches any.
-- Returns {status, channel, award value}: status 1 recorded, 0 duplicate, -1 unknown decision,
-- -2 offer not in the decision, -4 another caller's decision, {-5, bound} value above the bound;
-- channel and the offer's award value at decision time (for the learner) when recorded. Or
-- {-3, stored fingerprint}: the event id was used for another outcome.
local offer = ARGV[1]
local got = redis.call('HMGET', KEYS[1], 'offers', 'channel', 'p:' .. offer, 'caller')
local offers = got[1]
if not offers then
  return {-1}
end
local owner = got[4]
if owner and owner ~= '' and owner ~= ARGV[9] and ARGV[10] ~= '1' then
  return {-4}
end
local found = false
for o in string.gmatch(offers, '[^,]+') do
  if o == offer then
    found = true
    break
  end
end
if not found then
  return {-2}
end
local bound = got[3] and string.match(got[3], '^[^,]*,[^,]*,([^,]+)') or ARGV[12]
local limit = tonumber(bound) -- none for '' (no fallback) or 'inf'
if limit and tonumber(ARGV[11]) > limit then
  return {-5, bound}
end
local seen = redis.call('GET', KEYS[2])
if seen then
  if seen == ARGV[8] or seen == '1' then
    return {0}
  end
  return {-3, seen}
end
redis.call('SET', KEYS[2], ARGV[8], 'EX', ARGV[4])
local outcome = ARGV[2]
if outcome == 'presented' then
  local shown = redis.call('HINCRBY', KEYS[3], 'p:' .. offer, 1)
  if shown >= tonumber(ARGV[5]) then
    redis.call('HSET', KEYS[3], 's:' .. offer, tonumber(ARGV[3]) + tonumber(ARGV[6]))
    redis.call('HDEL', KEYS[3], 'p:' .. offer)
  end
elseif outcome == 'declined' then
  redis.call('HSET', KEYS[3], 'd:' .. offer, ARGV[3])
  redis.call('HDEL', KEYS[3], 'p:' .. offer)
else
  -- any response resets the count of presentations without one
  redis.call('HDEL', KEYS[3], 'p:' .. offer)
end
redis.call('EXPIRE', KEYS[3], ARGV[7])
return {1, got[2] or '', got[3] or ''}
