-- Stores a message and publishes it, as one step, so that every pod hears a
-- room's messages in the order of their ids.
-- KEYS: 1 stream, 2 newest trimmed id, 3 acknowledgements, 4 channel,
--       5 client_msg_id key (optional).
-- ARGV: 1 history length, 2 MESSAGE JSON with an empty id (it starts with
--       {"id":""), 3 ts, 4 publish command, 5 client_msg_id lifetime (s),
--       6 acknowledgement deadline (ms) or '', 7 deadlines key or '' (one
--       server only: in a cluster it lives in another slot, and the caller
--       records the deadline itself), 8 room.
-- Returns {id, stored JSON, acknowledgements, 1} for a retried
-- client_msg_id whose message is still stored, else {id, '', '', 0}.
local stream, trimmed, acks, channel, retry = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

if retry then
  local first = redis.call('GET', retry)
  if first then
    local entry = redis.call('XRANGE', stream, first, first)[1]
    if entry then
      return {first, entry[2][2], redis.call('HGET', acks, first) or '', 1}
    end
  end
end

local id = redis.call('XADD', stream, '*', 'm', ARGV[2])
if retry then
  redis.call('SET', retry, id, 'EX', ARGV[5])
end
if ARGV[6] ~= '' and ARGV[7] ~= '' then
  redis.call('ZADD', ARGV[7], ARGV[6], ARGV[8] .. '|' .. id)
end

-- Exact trimming, remembering the newest id removed (for `recovered`).
local excess = redis.call('XLEN', stream) - tonumber(ARGV[1])
if excess > 0 then
  local old = redis.call('XRANGE', stream, '-', '+', 'COUNT', excess)
  for _, entry in ipairs(old) do
    redis.call('HDEL', acks, entry[1])
  end
  redis.call('SET', trimmed, old[#old][1])
  redis.call('XTRIM', stream, 'MAXLEN', ARGV[1])
end

local frame = '{"type":"new_message","message":{"id":"' .. id .. string.sub(ARGV[2], 8) .. '}'
redis.call(ARGV[4], channel, 'm|' .. id .. '|' .. ARGV[3] .. '\n' .. frame)
return {id, '', '', 0}
