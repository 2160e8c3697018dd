-- Everything one decision reads, in one call: all keys are one customer's (one Cluster slot).
-- KEYS[1] features   KEYS[2] contacts hash   KEYS[3] sent-zset of the channel   KEYS[4] request key
-- ARGV: window_start (exclusive lower bound, e.g. "(1700000000.5"), has_request (0/1)
-- Returns {features or nil, contacts as a flat field/value list, sends in the window, the request
-- key's value ("<decision_id> <request fingerprint>", or a bare decision id if older) or nil}
local request = false
if ARGV[2] == '1' then
  request = redis.call('GET', KEYS[4])
end
return {
  redis.call('GET', KEYS[1]),
  redis.call('HGETALL', KEYS[2]),
  redis.call('ZCOUNT', KEYS[3], ARGV[1], '+inf'),
  request,
}
