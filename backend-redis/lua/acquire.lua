-- distlock acquire: one round trip.
-- Needs effects replication for TIME before a write (the default since
-- Redis 5; the only mode since 7).
if redis.replicate_commands then pcall(redis.replicate_commands) end
-- KEYS[1] lock key, KEYS[2] fence key, KEYS[3] owner key
-- ARGV[1] token, ARGV[2] ttl in ms, ARGV[3] owner label (absent: no label)
-- Returns {1, fence} when acquired, {0, pttl} when held (pttl < 0: no expiry).
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local t = redis.call('TYPE', KEYS[1])['ok']
  if t ~= 'string' then
    return redis.error_reply('WRONGTYPE key ' .. KEYS[1] .. ' holds a ' .. t .. ', not a lock')
  end
  return {0, redis.call('PTTL', KEYS[1])}
end
local fence = redis.pcall('INCR', KEYS[2])
if type(fence) == 'table' and fence['err'] then
  -- Undo: Redis does not roll a script back on error.
  redis.call('DEL', KEYS[1])
  local e = fence['err']
  if string.find(e, 'WRONGTYPE', 1, true) or string.find(e, 'not an integer', 1, true) then
    return redis.error_reply('WRONGTYPE key ' .. KEYS[2] .. ' does not hold a fencing counter')
  end
  -- Anything else (an ACL denial of INCR, ...) is reported as it is.
  return fence
end
-- INCR answered 1: the counter was missing (first use, expired, or lost with
-- the data on a restart without persistence or a failover). It starts from
-- the server clock in microseconds instead: no name is acquired more than
-- once per microsecond, so the new fences are above every fence handed out
-- before (unless the server's clock went backwards). That is also why the
-- counter may expire: it lives one day from its start (INCR keeps the
-- expiry), so names used once do not stay in Redis forever.
if fence == 1 then
  local now = redis.call('TIME')
  local start = now[1] .. string.format('%06d', tonumber(now[2]))
  redis.call('SET', KEYS[2], start, 'PX', 86400000)
  fence = tonumber(start)
end
if ARGV[3] then
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[2])
else
  redis.call('DEL', KEYS[3])
end
return {1, fence}
