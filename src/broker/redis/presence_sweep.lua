-- presence_sweep: ARGV[5..] ids of this pod's users in the room. Extends
-- their entries, reaps expired ones, and returns the users whose entry was
-- gone (reaped while the pod was cut off, or lost with Redis's data).
local now = now_ms()
local missing = {}
for i = 5, #ARGV do
  local member = ARGV[4] .. '|' .. ARGV[i]
  if redis.call('ZSCORE', KEYS[1], member) then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), member)
  else
    missing[#missing + 1] = ARGV[i]
  end
end
reap(now)
return missing
