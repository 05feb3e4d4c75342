-- distlock lib: the helper shared by the acquire, acquire_queued and release
-- scripts (each script is this file, for the queued scripts then queue.lua,
-- then its own body). The plain acquire script needs only this part: every
-- run of a script defines all of its helpers again, so the line of waiters'
-- helpers live in queue.lua, which the plain acquire does not include.
-- Needs effects replication for TIME before a write (the default since
-- Redis 5; the only mode since 7).
if redis.replicate_commands then pcall(redis.replicate_commands) end

-- Counts one more acquisition of the lock whose fencing counter is
-- `fence_key` and keeps the counter for `retention` ms. Returns the new
-- fence (a number, or its decimal text from 2^53 up), or nil and an error
-- reply. On an error `undo_key` (if any) is deleted first: Redis does not
-- roll a script back on error.
local function bump_fence(fence_key, retention, undo_key)
  local fence = redis.pcall('INCR', fence_key)
  if type(fence) == 'table' and fence['err'] then
    if undo_key then
      redis.call('DEL', undo_key)
    end
    local e = fence['err']
    if string.find(e, 'WRONGTYPE', 1, true) or string.find(e, 'not an integer', 1, true) then
      return nil, redis.error_reply('WRONGTYPE key ' .. fence_key .. ' does not hold a fencing counter')
    end
    -- Anything else (an ACL denial of INCR, ...) is reported as it is.
    return nil, fence
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
    redis.call('SET', fence_key, start)
    fence = tonumber(start)
  end
  -- Lua numbers are doubles: exact only up to 2^53. Above that (a counter
  -- raised there by a quorum, see raise_fence.lua) the reply is the
  -- counter's exact decimal text instead, or fences would repeat.
  if fence >= 9007199254740992 then
    fence = redis.call('GET', fence_key)
  end
  -- The counter lives for the retention after the name's last acquire, so
  -- names no longer used do not stay in Redis.
  redis.call('PEXPIRE', fence_key, retention)
  return fence
end
