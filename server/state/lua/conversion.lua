-- Record one conversion once per event id. The event key keeps the conversion's fingerprint and
-- the record is appended to the conversion stream in the same script: a recorded conversion is in
-- the log exactly once (no writer queue stands between them to lose it).
-- KEYS[1] event key   KEYS[2] conversion stream   (one slot: the {cv} tag)
-- ARGV: fingerprint, seconds to remember the event id, then the entry's field/value pairs
-- Returns {1} recorded, {0} duplicate, or {-3, stored fingerprint}: the event id was used for
-- another conversion. A refusal writes nothing.
local seen = redis.call('GET', KEYS[1])
if seen then
  if seen == ARGV[1] then
    return {0}
  end
  return {-3, seen}
end
local entry = {}
for i = 3, #ARGV do
  entry[#entry + 1] = ARGV[i]
end
redis.call('XADD', KEYS[2], '*', unpack(entry))
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {1}
