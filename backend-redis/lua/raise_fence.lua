-- distlock raise_fence: one round trip (for quorums of several servers).
-- KEYS[1] lock key, KEYS[2] fence key
-- ARGV[1] token, ARGV[2] the lowest fence wanted (a decimal integer)
-- Only while ARGV[1] holds the lock: fence = max(fence, ARGV[2]).
-- Returns {1, fence} (fence as a decimal string) when raised or already
-- high enough, {0} when the token does not hold the lock.
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' and v['err'] then
  return redis.error_reply('WRONGTYPE key ' .. KEYS[1] .. ' does not hold a lock')
end
if v ~= ARGV[1] then
  return {0}
end
local f = redis.pcall('GET', KEYS[2])
if type(f) == 'table' and f['err'] then
  return redis.error_reply('WRONGTYPE key ' .. KEYS[2] .. ' does not hold a fencing counter')
end
-- Compare as decimal strings (exact beyond 2^53): both are canonical
-- non-negative integers, so the longer one is larger, else the greater
-- string.
local want = ARGV[2]
if f and (#f > #want or (#f == #want and f >= want)) then
  return {1, f}
end
if f then
  redis.call('SET', KEYS[2], want, 'KEEPTTL')
else
  -- Missing (expired, or lost): live one day, as the acquire script does.
  redis.call('SET', KEYS[2], want, 'PX', 86400000)
end
return {1, want}
