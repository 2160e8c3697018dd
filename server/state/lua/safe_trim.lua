-- Trim a log stream toward ARGV[1] entries without removing an entry that some consumer group
-- has not acknowledged or not yet been delivered (server/streams.py: safe_trim). Atomic, so a
-- group cannot move between reading its state and trimming, and workers trimming at the same
-- time cannot each cut by length from a view the other has already shortened.
-- KEYS[1]: the stream. ARGV[1]: maxlen; ARGV[2]: most entries to remove in this call.
-- Returns the number of entries removed.
local stream = KEYS[1]
local length = redis.call('XLEN', stream)
local excess = math.min(length - tonumber(ARGV[1]), tonumber(ARGV[2]))
if excess <= 0 then
  return 0
end

-- Ids are "<ms>-<seq>" with 64-bit parts; Lua numbers are doubles, so compare the decimal
-- strings (Redis never pads them with zeros).
local function before(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if am ~= bm then
    return #am < #bm or (#am == #bm and am < bm)
  end
  return #as < #bs or (#as == #bs and as < bs)
end

-- The newest removable id over all groups: nothing after a group's last-delivered id (it has
-- not been delivered), nothing from its oldest pending id on (not acknowledged).
local bound, exclusive = nil, false
local function tighten(id, excl)
  if bound == nil or before(id, bound) or (id == bound and excl) then
    bound, exclusive = id, excl
  end
end
for _, group in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local info = {}
  for i = 1, #group, 2 do
    info[group[i]] = group[i + 1]
  end
  tighten(info['last-delivered-id'], false)
  if tonumber(info['pending']) > 0 then
    tighten(redis.call('XPENDING', stream, info['name'])[2], true)
  end
end

local n = excess
if bound ~= nil then
  -- how many of the oldest `excess` entries lie inside the removable range
  n = #redis.call('XRANGE', stream, '-', exclusive and ('(' .. bound) or bound, 'COUNT', excess)
end
if n > 0 then
  -- exact MAXLEN removes the n oldest entries, which are the ones counted above
  redis.call('XTRIM', stream, 'MAXLEN', length - n)
end
return n
