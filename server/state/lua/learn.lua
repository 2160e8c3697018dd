-- One learning step of the bandit: update an arm's posterior from one reward, once per
-- (decision, offer) however often the outcome is delivered. All keys carry the {bandit} tag.
--
-- KEYS[1] arms hash   KEYS[2] seen key of this (decision, offer)   KEYS[3] version counter
-- ARGV: arm, base_logit, reward (0/1), prior_precision, decay, seen_ttl,
--       then, for an offer drawn with arm inputs: signature, weight prior precision, x_1..x_k
-- Returns 1 learned, 0 already learned from.
--
-- The offset delta_0 + sum_i delta_i x_i is added to the model's logit; each delta has a Gaussian
-- posterior (mean, precision), diagonal. One Newton step of the Laplace approximation (Chapelle &
-- Li 2011): p = sigmoid(logit + mean_0 + sum_i mean_i x_i), precision_i += p (1 - p) x_i^2,
-- mean_i += (reward - p) x_i / precision_i (x_0 = 1). Before it every precision relaxes toward its
-- prior by the decay factor, so old evidence fades and drift is followed.
-- The arm is stored "mean,precision,n" and, once it has weights, ",signature" and a
-- ",mean,precision" pair per weight. Weights learned under another input declaration (another
-- signature) start again from their prior; an outcome drawn without inputs moves the intercept
-- alone and leaves the weights as they are.
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[6]) then
  return 0
end
local prior = tonumber(ARGV[4])
local decay = tonumber(ARGV[5])
local sig = ARGV[7] or ''
local wprior = tonumber(ARGV[8] or '1')
local x = {}
for i = 9, #ARGV do
  x[#x + 1] = tonumber(ARGV[i])
end
local mean, precision, n = 0, prior, 0
local stored, wm, wq = '', {}, {}
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
  local parts = {}
  for part in string.gmatch(raw, '[^,]+') do
    parts[#parts + 1] = part
  end
  mean, precision, n = tonumber(parts[1]), tonumber(parts[2]), tonumber(parts[3])
  if #parts >= 4 then
    stored = parts[4]
    for i = 5, #parts - 1, 2 do
      wm[#wm + 1] = tonumber(parts[i])
      wq[#wq + 1] = tonumber(parts[i + 1])
    end
  end
end
local use = sig ~= ''
if use and (stored ~= sig or #wm ~= #x) then
  stored, wm, wq = sig, {}, {}
  for i = 1, #x do
    wm[i], wq[i] = 0, wprior
  end
end
precision = prior + decay * (precision - prior)
local z = tonumber(ARGV[2]) + mean
if use then
  for i = 1, #x do
    wq[i] = wprior + decay * (wq[i] - wprior)
    z = z + wm[i] * x[i]
  end
end
local p = 1 / (1 + math.exp(-z))
local h, g = p * (1 - p), tonumber(ARGV[3]) - p
precision = precision + h
mean = mean + g / precision
if use then
  for i = 1, #x do
    wq[i] = wq[i] + h * x[i] * x[i]
    wm[i] = wm[i] + g * x[i] / wq[i]
  end
end
local out = string.format('%.17g,%.17g,%d', mean, precision, n + 1)
if stored ~= '' then
  out = out .. ',' .. stored
  for i = 1, #wm do
    out = out .. string.format(',%.17g,%.17g', wm[i], wq[i])
  end
end
redis.call('HSET', KEYS[1], ARGV[1], out)
redis.call('INCR', KEYS[3])
return 1
