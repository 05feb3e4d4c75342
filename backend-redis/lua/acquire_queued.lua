-- distlock acquire_queued: one round trip (after lib.lua), for a lock()
-- call that keeps waiting in the lock's line of waiters.
-- KEYS[1] lock key, KEYS[2] fence key, KEYS[3] owner key,
-- KEYS[4] tombstone of this token, KEYS[5] waiters, KEYS[6] leases
-- ARGV[1] token, ARGV[2] ttl in ms, ARGV[3] fence retention in ms,
-- ARGV[4] this backend's id (16 hex digits), ARGV[5] this waiter's id
-- (16 hex digits), ARGV[6] the waiter's lease (= claim window) in ms,
-- ARGV[7] the encoded lock key (grant payload), ARGV[8] 's' to publish with
-- SPUBLISH, ARGV[9] owner label (absent: no label)
-- Returns {1, fence} when acquired (taken, or a handover claimed),
-- {0, pttl} when held (this waiter is in line).
local k = {lock = KEYS[1], fence = KEYS[2], owner = KEYS[3], waiters = KEYS[5], leases = KEYS[6]}
local token, ttl = ARGV[1], ARGV[2]

local function set_owner(lease)
  if ARGV[9] then
    redis.call('SET', k.owner, ARGV[9], 'PX', lease)
  else
    redis.call('DEL', k.owner)
  end
end

return guarded(function()
  if redis.call('GET', KEYS[4]) then
    -- As in acquire.lua: a late copy of a call whose token was given back.
    return redis.error_reply('STALE token of ' .. k.lock .. ' was already released; late acquire refused')
  end
  local v = redis.pcall('GET', k.lock)
  if type(v) == 'table' and v['err'] then
    local t = redis.call('TYPE', k.lock)['ok']
    return redis.error_reply('WRONGTYPE key ' .. k.lock .. ' holds a ' .. t .. ', not a lock')
  end
  if v == token then
    -- The claim of a handover to this waiter (or a repeated call): the
    -- lease is ttl from now, never shortened (a late repeat after a longer
    -- extend; a handover's claim window is shorter than any ttl that uses
    -- the line); the handover already counted the fence.
    local fence = redis.pcall('GET', k.fence)
    if type(fence) ~= 'string' or not tonumber(fence) then
      return redis.error_reply('ERR the fencing counter ' .. k.fence .. ' of a claimed handover is gone')
    end
    -- Leaving first: its error (a line key of another type) is the only
    -- one possible here, and must come before any write.
    leave(k.waiters, k.leases, token)
    local lease = math.max(redis.call('PTTL', k.lock), tonumber(ttl))
    redis.call('PEXPIRE', k.lock, lease)
    set_owner(lease)
    -- The counter's text: exact beyond 2^53 (a Lua number is not).
    return {1, fence}
  end
  local now_ms, now_us = server_now()
  if v then
    -- Held by another token: join the line, or keep the place.
    local pttl = redis.call('PTTL', k.lock)
    if pttl == -1 then
      return redis.error_reply('WRONGTYPE key ' .. k.lock .. ' has no expiry, so distlock did not write it (not a lock)')
    end
    join(k.waiters, k.leases, token, now_ms, now_us, ARGV[4], ARGV[5], ARGV[6])
    return {0, pttl}
  end
  local head, rec = first_live(k.waiters, k.leases, now_ms, nil, 16)
  if head == nil and rec then
    -- More lapsed places ahead than one call drops: this waiter may not be
    -- first. Keep (or take) its place and call again soon; every call
    -- drops more of them.
    join(k.waiters, k.leases, token, now_ms, now_us, ARGV[4], ARGV[5], ARGV[6])
    return {0, 0}
  end
  if head == nil or head == token then
    -- Free, and this waiter is first (or nobody is in line): take it as
    -- acquire.lua does. Leaving first: its error is the only one possible
    -- before the write (bump_fence undoes the SET on its own error).
    leave(k.waiters, k.leases, token)
    redis.call('SET', k.lock, token, 'PX', ttl)
    local fence, err = bump_fence(k.fence, ARGV[3], k.lock)
    if err then
      return err
    end
    set_owner(ttl)
    return {1, fence}
  end
  -- Free (a holder's or a handover's lease ended), another waiter first:
  -- hand it the lock and line up behind it.
  local granted = grant(k, head, rec, ARGV[3], ARGV[7], ARGV[8] == 's')
  join(k.waiters, k.leases, token, now_ms, now_us, ARGV[4], ARGV[5], ARGV[6])
  if not granted then
    -- No greater fencing token exists: the key stays free (no expiry).
    return {0, -2}
  end
  return {0, tonumber(rec.claim)}
end)
