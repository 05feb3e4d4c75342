-- distlock inspect: one round trip, read only.
-- KEYS[1] lock key, KEYS[2] fence key, KEYS[3] owner key
-- Returns {held (0/1), pttl, owner label or nil, last fence or nil}.
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' and v['err'] then
  return redis.error_reply('WRONGTYPE key ' .. KEYS[1] .. ' does not hold a lock')
end
local fence = redis.pcall('GET', KEYS[2])
if type(fence) == 'table' and fence['err'] then
  return redis.error_reply('WRONGTYPE key ' .. KEYS[2] .. ' does not hold a fencing counter')
end
if not v then
  return {0, -2, false, fence}
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -1 then
  return redis.error_reply('WRONGTYPE key ' .. KEYS[1] .. ' has no expiry, so distlock did not write it (not a lock)')
end
local owner = redis.pcall('GET', KEYS[3])
if type(owner) == 'table' then
  owner = false
end
return {1, pttl, owner, fence}
