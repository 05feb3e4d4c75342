-- distlock acquire: one round trip (after lib.lua).
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
    -- answer), or the plain claim of a handover from the line of waiters:
    -- it already holds the lock. Answer with the hold's fence, and renew
    -- the lease to this call's TTL (the caller counts it from this call;
    -- a handover's lease is only the claim window), never shortening it
    -- (a late repeat after a longer extend).
    local fence = redis.pcall('GET', KEYS[2])
    if type(fence) ~= 'string' or not tonumber(fence) then
      return redis.error_reply('ERR the fencing counter ' .. KEYS[2] .. ' of a repeated acquire is gone')
    end
    local lease = math.max(pttl, tonumber(ARGV[2]))
    redis.call('PEXPIRE', KEYS[1], lease)
    if ARGV[4] then
      redis.call('SET', KEYS[3], ARGV[4], 'PX', lease)
    else
      redis.call('DEL', KEYS[3])
    end
    -- The counter's text: exact beyond 2^53 (a Lua number is not).
    return {1, fence}
  end
  if pttl == -1 then
    return redis.error_reply('WRONGTYPE key ' .. KEYS[1] .. ' has no expiry, so distlock did not write it (not a lock)')
  end
  return {0, pttl}
end
local fence, err = bump_fence(KEYS[2], ARGV[3], KEYS[1])
if err then
  return err
end
if ARGV[4] then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[2])
else
  redis.call('DEL', KEYS[3])
end
return {1, fence}
