-- Stores a message and publishes it, as one step, so that every pod hears a
-- room's messages in the order of their ids.
-- KEYS: 1 stream, 2 newest trimmed id, 3 acknowledgements, 4 channel,
--       5 client_msg_id key (optional).
-- ARGV: 1 history length, 2 MESSAGE JSON with an empty id (it starts with
--       {"id":""), 3 ts, 4 publish command, 5 client_msg_id lifetime (s),
--       6 acknowledgement deadline (ms) or '', 7 deadlines key or '' (one
--       server only: in a cluster it lives in another slot, and the caller
--       records the deadline itself), 8 room, 9 retention in ms or ''.
-- Returns {id, stored JSON, acknowledgements, 1} for a retried
-- client_msg_id whose message is still stored, {id, ts, '', 2} for one
-- whose message was trimmed since, else {id, '', '', 0}.
local stream, trimmed, acks, channel, retry = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

-- Drops the oldest entries up to `last` (inclusive), remembering the
-- newest id removed (for `recovered`).
local function trim_through(old)
  if #old == 0 then
    return
  end
  for _, entry in ipairs(old) do
    redis.call('HDEL', acks, entry[1])
    redis.call('XDEL', stream, entry[1])
  end
  redis.call('SET', trimmed, old[#old][1])
end

if retry then
  local first = redis.call('GET', retry)
  if first then
    local sep = string.find(first, '|', 1, true)
    local first_id = string.sub(first, 1, sep - 1)
    local entry = redis.call('XRANGE', stream, first_id, first_id)[1]
    if entry then
      return {first_id, entry[2][2], redis.call('HGET', acks, first_id) or '', 1}
    end
    return {first_id, string.sub(first, sep + 1), '', 2}
  end
end

local id = redis.call('XADD', stream, '*', 'm', ARGV[2])
if retry then
  redis.call('SET', retry, id .. '|' .. ARGV[3], 'EX', ARGV[5])
end
if ARGV[6] ~= '' and ARGV[7] ~= '' then
  redis.call('ZADD', ARGV[7], ARGV[6], ARGV[8] .. '|' .. id)
end

-- Exact trimming to the history length, then retention by age.
local excess = redis.call('XLEN', stream) - tonumber(ARGV[1])
if excess > 0 then
  trim_through(redis.call('XRANGE', stream, '-', '+', 'COUNT', excess))
end
if ARGV[9] ~= '' then
  local oldest_kept = tonumber(ARGV[3]) - tonumber(ARGV[9])
  trim_through(redis.call('XRANGE', stream, '-', '(' .. oldest_kept .. '-0'))
end

local frame = '{"type":"new_message","message":{"id":"' .. id .. string.sub(ARGV[2], 8) .. '}'
redis.call(ARGV[4], channel, 'm|' .. id .. '|' .. ARGV[3] .. '\n' .. frame)
return {id, '', '', 0}
