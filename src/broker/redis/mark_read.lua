-- Moves a user's read mark forward. KEYS: 1 read marks.
-- ARGV: 1 user id, 2 message id. Returns 1 when the mark moved.

-- Compares two decimal numbers of any length.
local function compare(a, b)
  a = string.gsub(a, '^0+', '')
  b = string.gsub(b, '^0+', '')
  if #a ~= #b then
    return #a < #b and -1 or 1
  end
  if a == b then
    return 0
  end
  return a < b and -1 or 1
end

local last = redis.call('HGET', KEYS[1], ARGV[1])
if last then
  local last_ms, last_seq = string.match(last, '^(%d+)-(%d+)$')
  local ms, seq = string.match(ARGV[2], '^(%d+)-(%d+)$')
  local order = compare(ms, last_ms)
  if order == 0 then
    order = compare(seq, last_seq)
  end
  if order <= 0 then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
