-- distlock acquire: one round trip.
-- Needs effects replication for TIME before a write (the default since
-- Redis 5; the only mode since 7).
if redis.replicate_commands then pcall(redis.replicate_commands) end
-- KEYS[1] lock key, KEYS[2] fence key, KEYS[3] owner key,
-- KEYS[4] tombstone of this token (written by a release that found the lock
-- not held by it)
-- ARGV[1] token, ARGV[2] ttl in ms, ARGV[3] fence retention in ms,
-- ARGV[4] owner label (absent: no label)
-- Returns {1, fence} when acquired, {0, pttl} when held.
if redis.call('GET', KEYS[4]) then
  -- This token was already given back (its acquire was cancelled and the
  -- release ran first): this is a late copy of that acquire. Refuse it, or
  -- the lock would stay held until its TTL with nobody holding the guard.
  return redis.error_reply('STALE token of ' .. KEYS[1] .. ' was already released; late acquire refused')
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local t = redis.call('TYPE', KEYS[1])['ok']
  if t ~= 'string' then
    return redis.error_reply('WRONGTYPE key ' .. KEYS[1] .. ' holds a ' .. t .. ', not a lock')
  end
  local pttl = redis.call('PTTL', KEYS[1])
  if redis.call('GET', KEYS[1]) == ARGV[1] then
    -- The same acquire sent again (its connection dropped before the
    -- answer): it already holds the lock, answer as the first time did.
    local fence = redis.pcall('GET', KEYS[2])
    if type(fence) ~= 'string' or not tonumber(fence) then
      return redis.error_reply('ERR the fencing counter ' .. KEYS[2] .. ' of a repeated acquire is gone')
    end
    return {1, tonumber(fence)}
  end
  if pttl == -1 then
    return redis.error_reply('WRONGTYPE key ' .. KEYS[1] .. ' has no expiry, so distlock did not write it (not a lock)')
  end
  return {0, pttl}
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
-- INCR answered 1: the counter was missing (first use, expired after the
-- retention, or lost with the data on a restart without persistence or a
-- failover). It starts from the server clock in microseconds instead: no
-- name is acquired more than once per microsecond, so the new fences are
-- above every fence handed out before, unless the server's clock stepped
-- back by more than the time since the counter's last acquire (at least the
-- retention when it expired).
if fence == 1 then
  local now = redis.call('TIME')
  local start = now[1] .. string.format('%06d', tonumber(now[2]))
  redis.call('SET', KEYS[2], start)
  fence = tonumber(start)
end
-- The counter lives for the retention after the name's last acquire, so
-- names no longer used do not stay in Redis.
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if ARGV[4] then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[2])
else
  redis.call('DEL', KEYS[3])
end
return {1, fence}
