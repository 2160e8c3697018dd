-- Take one call from a client's token bucket (server/state/rate_limit.py). One key, so the
-- client's bucket is one Cluster slot and replicas share it.
-- KEYS[1]: the bucket hash {tokens, at}. ARGV: rate (tokens per second), burst (the bucket's
-- size), now (epoch seconds of the calling server's clock).
-- Returns {1, 0} when the call may go on, else {0, milliseconds until a token is back}.
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens, at = burst, now
elseif now > at then
  -- a replica whose clock is behind refills nothing rather than taking time back
  tokens = math.min(burst, tokens + (now - at) * rate)
  at = now
end
local allowed, wait_ms = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait_ms = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', string.format('%.17g', at))
-- a full bucket is the same as none: the key lives only as long as it takes to refill
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, wait_ms}
