-- One learning step of the bandit: update an arm's posterior from one reward, once per
-- (decision, offer) however often the outcome is delivered. All keys carry the {bandit} tag.
--
-- KEYS[1] arms hash   KEYS[2] seen key of this (decision, offer)   KEYS[3] version counter
-- ARGV: arm, base_logit, reward (0/1), prior_precision, decay, seen_ttl
-- Returns 1 learned, 0 already learned from.
--
-- The offset delta ~ N(mean, 1/precision) is added to the model's logit. One Newton step of the
-- Laplace approximation (Chapelle & Li 2011): p = sigmoid(logit + mean),
-- precision += p (1 - p), mean += (reward - p) / precision. Before it the precision relaxes
-- toward the prior by the decay factor, so old evidence fades and drift is followed.
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[6]) then
  return 0
end
local prior = tonumber(ARGV[4])
local mean, precision, n = 0, prior, 0
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
  local a, b, c = string.match(raw, '^([^,]+),([^,]+),([^,]+)$')
  mean, precision, n = tonumber(a), tonumber(b), tonumber(c)
end
precision = prior + tonumber(ARGV[5]) * (precision - prior)
local p = 1 / (1 + math.exp(-(tonumber(ARGV[2]) + mean)))
precision = precision + p * (1 - p)
mean = mean + (tonumber(ARGV[3]) - p) / precision
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.17g,%.17g,%d', mean, precision, n + 1))
redis.call('INCR', KEYS[3])
return 1
