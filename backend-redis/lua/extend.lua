-- distlock extend: one round trip.
-- KEYS[1] lock key, KEYS[2] owner key; ARGV[1] token, ARGV[2] ttl in ms
-- Returns 1 when extended, 0 when the token does not hold the lock.
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' and v['err'] then
  return redis.error_reply('WRONGTYPE key ' .. KEYS[1] .. ' does not hold a lock')
end
if v ~= ARGV[1] then
  if v and redis.call('PTTL', KEYS[1]) == -1 then
    return redis.error_reply('WRONGTYPE key ' .. KEYS[1] .. ' has no expiry, so distlock did not write it (not a lock)')
  end
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
