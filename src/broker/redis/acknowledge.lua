-- Records that a user takes responsibility for a message, once per user,
-- and publishes message_acknowledged.
-- KEYS: 1 stream, 2 acknowledgements, 3 channel.
-- ARGV: 1 publish command, 2 message id, 3 user id, 4 acknowledgement JSON,
--       5 envelope to publish.
-- Returns 'ok', 'again', 'missing', 'no_ack' or 'own'.
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])[1]
if not entry then
  return 'missing'
end
local json = entry[2][2]
if not string.find(json, '"needs_ack":true', 1, true) then
  return 'no_ack'
end
if string.find(json, '"from":{"id":"' .. ARGV[3] .. '"', 1, true) then
  return 'own'
end

local list = redis.call('HGET', KEYS[2], ARGV[2]) or ''
if string.find(list, '{"user":{"id":"' .. ARGV[3] .. '"', 1, true) then
  return 'again'
end
if list == '' then
  list = ARGV[4]
else
  list = list .. ',' .. ARGV[4]
end
redis.call('HSET', KEYS[2], ARGV[2], list)
redis.call(ARGV[1], KEYS[3], ARGV[5])
return 'ok'
