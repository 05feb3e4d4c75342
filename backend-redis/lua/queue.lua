-- distlock queue lib: the line of waiters' helpers, shared by the
-- acquire_queued and release scripts (after lib.lua, before their body).

-- The line of waiters of a lock: `waiters` is a sorted set of tokens scored
-- by the server time of joining in microseconds (the FIFO order), `leases` a
-- hash token -> 'LEASE_END_MS BACKEND WAITER CLAIM_MS'.

-- Raised by the queue helpers below (inside `guarded`) for a queue key of
-- another type.
local function queue_call(cmd, key, ...)
  local r = redis.pcall(cmd, key, ...)
  if type(r) == 'table' and r['err'] then
    if string.find(r['err'], 'WRONGTYPE', 1, true) then
      error({err = 'WRONGTYPE key ' .. key .. ' does not hold a distlock waiter line'})
    end
    error(r)
  end
  return r
end

-- Runs `body` and turns an error raised in it (a queue key of another type,
-- a refused command) into the script's error reply.
local function guarded(body)
  local ok, r = pcall(body)
  if ok then
    return r
  end
  -- An error table, or (Redis 7 turns raised tables into their message)
  -- its message; keep its code (WRONGTYPE, NOPERM, ...).
  if type(r) == 'table' and r['err'] then
    r = r['err']
  end
  r = tostring(r)
  if string.match(r, '^%-?%u[%u_]* ') then
    return redis.error_reply(r)
  end
  return redis.error_reply('ERR ' .. r)
end

-- {milliseconds, microseconds} of the server clock, as numbers and as the
-- microseconds' decimal string (exact, for a sorted set score).
local function server_now()
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  return ms, t[1] .. string.format('%06d', tonumber(t[2]))
end

-- Joins the line at its tail, or renews the place of a waiter already in
-- line (a live place), for `lease` ms from `now_ms`. Both keys then live
-- at least `lease` ms (never shortened: another waiter's lease may be
-- longer).
local function join(waiters, leases, token, now_ms, now_us, backend, waiter, lease)
  -- A live place keeps its score (its turn); a place that lapsed is gone
  -- even if no call has dropped it yet, so this call joins at the tail.
  local old = queue_call('HGET', leases, token)
  local old_end = type(old) == 'string' and tonumber(string.match(old, '^(%d+) '))
  if old_end and old_end > now_ms then
    queue_call('ZADD', waiters, 'NX', now_us, token)
  else
    queue_call('ZADD', waiters, now_us, token)
  end
  local record = string.format('%d', now_ms + tonumber(lease)) .. ' ' .. backend .. ' ' .. waiter .. ' ' .. lease
  queue_call('HSET', leases, token, record)
  for _, key in ipairs({waiters, leases}) do
    if redis.call('PTTL', key) < tonumber(lease) then
      redis.call('PEXPIRE', key, lease)
    end
  end
end

-- Takes `token` out of the line.
local function leave(waiters, leases, token)
  queue_call('ZREM', waiters, token)
  queue_call('HDEL', leases, token)
end

-- The first waiter whose lease has not ended, left in line: its token and
-- {backend, waiter, claim_ms}. Waiters whose lease ended (or `skip`) are
-- dropped on the way, at most `cap` per call (a bound on one script's run
-- time); nil, false when nobody is live; nil, true when the cap was reached
-- with places still to look at (the next call goes on from there).
local function first_live(waiters, leases, now_ms, skip, cap)
  for _ = 1, cap do
    local head = queue_call('ZRANGE', waiters, 0, 0)[1]
    if not head then
      return nil, false
    end
    local record = queue_call('HGET', leases, head)
    if head ~= skip and type(record) == 'string' then
      local lease_end, backend, waiter, claim = string.match(record, '^(%d+) (%x+) (%x+) (%d+)$')
      -- A record distlock did not write counts as lapsed.
      if lease_end and #backend == 16 and #waiter == 16 and tonumber(lease_end) > now_ms then
        return head, {backend = backend, waiter = waiter, claim = claim}
      end
    end
    leave(waiters, leases, head)
  end
  return nil, queue_call('ZRANGE', waiters, 0, 0)[1] ~= nil
end

-- Hands the lock to `head` (from first_live): the fence counts this
-- acquisition first (its error is the only one possible here once
-- first_live has read the line, so an error leaves everything as it was),
-- then the waiter leaves the line, the lock key holds its token for its
-- claim window (replacing a holder's token: a release hands over without
-- freeing the key), and its backend hears of it on the lock key +
-- ':grant:' + BACKEND with the payload 'ENCODED-KEY WAITER'. Returns
-- 'BACKEND WAITER', or nil (nothing written) when the fencing counter is at
-- its maximum. k = {lock, owner, fence, waiters, leases}.
local function grant(k, head, rec, retention, payload, sharded)
  local _, err = bump_fence(k.fence, retention, nil)
  if err then
    if string.find(tostring(err['err']), 'overflow', 1, true) then
      -- The counter is at its maximum (MAX_FENCE): no greater fencing
      -- token exists, so nobody can be handed the lock (the memory
      -- backend's rule); the waiter keeps its place.
      return nil
    end
    error(err)
  end
  leave(k.waiters, k.leases, head)
  redis.call('SET', k.lock, head, 'PX', rec.claim)
  redis.call('DEL', k.owner)
  redis.call(sharded and 'SPUBLISH' or 'PUBLISH', k.lock .. ':grant:' .. rec.backend, payload .. ' ' .. rec.waiter)
  return rec.backend .. ' ' .. rec.waiter
end
