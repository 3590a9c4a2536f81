-- ARGV: name, token, lease_ms. Moves a live grant's deadline to now + lease_ms;
-- an expired lease is never revived. Returns {'extended', deadline, now} | {'not_held', reason}
local token, lease_ms = ARGV[2], tonumber(ARGV[3])
local inc, fence = token_parts(token)
if not fence then return {'not_held', 'unknown'} end
local now = now_ms()
local s = state('o:' .. int(fence))
if not s or inc ~= s.inc then return {'not_held', 'unknown'} end
local deadline = tonumber(redis.call('ZSCORE', held, token))
-- An offer's token was never given to a caller.
if s.extra then return {'not_held', 'unknown'} end
if not deadline then return {'not_held', reason(s, fence)} end
if deadline <= now then
  expire(s, now)
  promote(s, now)
  finish(s, now)
  return {'not_held', 'expired'}
end
deadline = now + lease_ms
redis.call('ZADD', held, 'XX', deadline, token)
finish(s, now)
return {'extended', deadline, now}
