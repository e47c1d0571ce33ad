-- presence_add: ARGV[5] user id, ARGV[6] USER JSON, ARGV[7] "1" to announce
-- the arrival from here (a pod restoring an entry that was lost).
-- Returns {1 if the user's presence began, distinct users}.
local now = now_ms()
reap(now)
local member = ARGV[4] .. '|' .. ARGV[5]
local changed = enter(member, ARGV[5], ARGV[6], now, ARGV[7] == '1')
return {changed, redis.call('HLEN', KEYS[2])}
