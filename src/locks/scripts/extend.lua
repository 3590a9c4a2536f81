-- ARGV: name, token, lease_ms. Moves a live grant's deadline to now + lease_ms;
-- an expired lease is never revived. Returns {'extended', deadline, now} | {'not_held', reason}
local token, lease_ms = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local s = state()
local inc, fence = token_parts(token)
if not s or inc ~= s.inc then return {'not_held', 'unknown'} end
local deadline = tonumber(redis.call('ZSCORE', held, token))
if not deadline or redis.call('HEXISTS', meta, 'o:' .. int(fence)) == 1 then
  return {'not_held', reason(s, fence)}
end
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
