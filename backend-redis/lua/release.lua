-- distlock release: one round trip.
-- KEYS[1] lock key, KEYS[2] owner key
-- ARGV[1] token, ARGV[2] release channel, ARGV[3] notification payload,
-- ARGV[4] 's' to publish with SPUBLISH (Redis Cluster: sharded pub/sub)
-- Returns 1 when released (and published), 0 when the token does not hold it.
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' and v['err'] then
  return redis.error_reply('WRONGTYPE key ' .. KEYS[1] .. ' does not hold a lock')
end
if v ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call(ARGV[4] == 's' and 'SPUBLISH' or 'PUBLISH', ARGV[2], ARGV[3])
return 1
