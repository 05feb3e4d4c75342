-- distlock release: one round trip.
-- KEYS[1] lock key, KEYS[2] owner key, KEYS[3] tombstone of this token
-- ARGV[1] token, ARGV[2] release channel, ARGV[3] notification payload,
-- ARGV[4] tombstone lifetime in ms,
-- ARGV[5] 's' to publish with SPUBLISH (Redis Cluster: sharded pub/sub)
-- Returns 1 when released (and published), 0 when the token does not hold it.
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' and v['err'] then
  return redis.error_reply('WRONGTYPE key ' .. KEYS[1] .. ' does not hold a lock')
end
if v ~= ARGV[1] then
  -- Not held by this token: its acquire may still be on its way (cancelled
  -- in flight on a connection that was then dropped). Leave a short-lived
  -- tombstone that the acquire script honours, so a late acquire cannot
  -- take the lock after this release.
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call(ARGV[5] == 's' and 'SPUBLISH' or 'PUBLISH', ARGV[2], ARGV[3])
return 1
