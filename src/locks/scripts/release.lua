-- ARGV: name, token. Frees the slot only if this exact grant holds it now.
-- Returns {'released'} | {'not_held', reason}
local token = ARGV[2]
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
redis.call('ZREM', held, token)
set_ended(s, fence, 0)
expire(s, now)
promote(s, now)
finish(s, now)
return {'released'}
