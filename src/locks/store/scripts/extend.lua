-- ARGV: name, token, lease_ms. Moves a live grant's deadline to now + lease_ms;
-- an expired lease is never revived. Returns {'extended', deadline} | {'not_held', reason}
local token, lease_ms = ARGV[2], tonumber(ARGV[3])
local now = clock()
local s, refusal = live_grant(token, now)
if not s then return refusal end
local deadline = now.ms + lease_ms
redis.call('ZADD', held, 'XX', deadline, token)
finish(s, now)
return {'extended', deadline}
