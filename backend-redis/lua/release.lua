-- distlock release: one round trip (after lib.lua).
-- KEYS[1] lock key, KEYS[2] owner key, KEYS[3] tombstone of this token,
-- KEYS[4] fence key, KEYS[5] waiters, KEYS[6] leases
-- ARGV[1] token, ARGV[2] release channel, ARGV[3] notification payload
-- (the encoded lock key), ARGV[4] tombstone lifetime in ms,
-- ARGV[5] 's' to publish with SPUBLISH (Redis Cluster: sharded pub/sub),
-- ARGV[6] fence retention in ms, ARGV[7] 'g' for a give-back (the tombstone
-- is left whether or not the token holds the lock)
-- Returns 1 when released (and published on the release channel),
-- 'BACKEND WAITER' when released and handed over to the first live waiter
-- in line, 0 when the token does not hold the lock.
local k = {lock = KEYS[1], owner = KEYS[2], fence = KEYS[4], waiters = KEYS[5], leases = KEYS[6]}
local sharded = ARGV[5] == 's'
return guarded(function()
  local v = redis.pcall('GET', k.lock)
  if type(v) == 'table' and v['err'] then
    return redis.error_reply('WRONGTYPE key ' .. k.lock .. ' does not hold a lock')
  end
  if v ~= ARGV[1] then
    -- Not held by this token: its acquire may still be on its way (cancelled
    -- in flight on a connection that was then dropped). Leave a short-lived
    -- tombstone that the acquire scripts honour, so a late acquire cannot
    -- take the lock after this release. A place of this token in line is
    -- given back.
    redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
    leave(k.waiters, k.leases, ARGV[1])
    return 0
  end
  if ARGV[7] == 'g' then
    -- A give-back: another call with this token may still be on its way
    -- (it timed out, and the caller went on with a new token or gave up),
    -- so refuse it too once this token's hold ends here.
    redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
  end
  -- The one probe of the uncontended release: a missing key. PTTL (an
  -- integer reply, -2 for a missing key) costs the server less than the
  -- ZRANGE of a missing key (an empty array turned into a Lua table), and
  -- the minimal ACL already allows it; a key of another type still reaches
  -- first_live and its WRONGTYPE error.
  if redis.call('PTTL', k.waiters) ~= -2 then
    -- Every check that can fail (the line's keys, the fence counter) runs
    -- before the lock key is written: Redis does not undo a script's
    -- writes when it errors, and a release that answers an error must
    -- leave the lock as it was (dropping lapsed places and a give-back's
    -- tombstone aside).
    local first, rec = first_live(k.waiters, k.leases, server_now(), ARGV[1], 256)
    local granted = first and grant(k, first, rec, ARGV[6], ARGV[3], sharded)
    if granted then
      return granted
    end
  end
  redis.call('DEL', k.lock, k.owner)
  redis.call(sharded and 'SPUBLISH' or 'PUBLISH', ARGV[2], ARGV[3])
  return 1
end)
