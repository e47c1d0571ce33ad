-- Takes the deadlines that passed out of the set, so that each goes to one
-- pod only. KEYS: 1 deadlines (member "<room>|<id>", scored by deadline ms).
-- ARGV: 1 now (ms), 2 most to take. Returns the members taken.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
end
return due
