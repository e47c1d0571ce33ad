-- Shared head of the presence scripts. A presence entry is the member
-- "<node>|<user>" of the sorted set KEYS[1], scored by the time (ms) it
-- expires unless its pod refreshes it. KEYS[2] maps user -> USER JSON and
-- KEYS[3] user -> number of entries, so a user counts once however many pods
-- carry them. KEYS[4] is the room's channel.
-- ARGV[1] publish command (PUBLISH or SPUBLISH), ARGV[2] room,
-- ARGV[3] entry lifetime in ms, ARGV[4] node id.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Publishes a frame to the room, excluding no connection.
local function announce(frame)
  redis.call(ARGV[1], KEYS[4], 'e||0\n' .. frame)
end

local function room_info()
  local count = redis.call('HLEN', KEYS[2])
  announce('{"type":"room_info_update","room":"' .. ARGV[2] .. '","member_count":' .. count .. '}')
end

-- Counts one more entry for a user; announces the user's arrival when asked.
local function enter(member, user, json, now, loud)
  redis.call('HSET', KEYS[2], user, json)
  if redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), member) == 0 then
    return 0
  end
  if redis.call('HINCRBY', KEYS[3], user, 1) ~= 1 then
    return 0
  end
  if loud then
    announce('{"type":"user_joined","room":"' .. ARGV[2] .. '","user":' .. json .. '}')
    room_info()
  end
  return 1
end

-- Counts one entry less; the user leaves with their last entry.
local function leave(member, user, loud)
  if redis.call('ZREM', KEYS[1], member) == 0 then
    return 0
  end
  if redis.call('HINCRBY', KEYS[3], user, -1) > 0 then
    return 0
  end
  local json = redis.call('HGET', KEYS[2], user)
  redis.call('HDEL', KEYS[3], user)
  redis.call('HDEL', KEYS[2], user)
  if loud and json then
    announce('{"type":"user_left","room":"' .. ARGV[2] .. '","user":' .. json .. '}')
    room_info()
  end
  return 1
end

-- Removes the entries of pods that stopped refreshing them. Only the caller
-- that removes an entry announces it, so the room hears of it once.
local function reap(now)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  for _, member in ipairs(expired) do
    local bar = string.find(member, '|', 1, true)
    leave(member, string.sub(member, bar + 1), true)
  end
end
