-- ARGV: token, lease_ms, grace_ms. Moves a live grant's deadline to now + lease_ms.
-- Returns the new deadline | -1 not held (an expired lease is never revived)
local token, lease_ms, grace_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
if not live_score(token, now, grace_ms) then return -1 end
local deadline = now + lease_ms
redis.call('ZADD', held, 'XX', deadline, token)
refresh_ttl()
return deadline
