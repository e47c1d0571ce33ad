-- presence_remove: ARGV[5] user id.
-- Returns {1 if the user's presence ended, distinct users}.
local changed = leave(ARGV[4] .. '|' .. ARGV[5], ARGV[5], false)
return {changed, redis.call('HLEN', KEYS[2])}
