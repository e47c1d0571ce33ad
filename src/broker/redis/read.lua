-- Reads a slice of a room's history with the acknowledgements of the
-- messages that need them.
-- KEYS: 1 stream, 2 acknowledgements, 3 newest trimmed id.
-- ARGV: 1 XRANGE or XREVRANGE, 2 start, 3 end, 4 count.
-- Returns {newest trimmed id or '', id, JSON, acks, id, JSON, acks, ...}.
local out = {redis.call('GET', KEYS[3]) or ''}
local entries = redis.call(ARGV[1], KEYS[1], ARGV[2], ARGV[3], 'COUNT', ARGV[4])
for _, entry in ipairs(entries) do
  local json = entry[2][2]
  local acks = ''
  if string.find(json, '"needs_ack":true', 1, true) then
    acks = redis.call('HGET', KEYS[2], entry[1]) or ''
  end
  out[#out + 1] = entry[1]
  out[#out + 1] = json
  out[#out + 1] = acks
end
return out
