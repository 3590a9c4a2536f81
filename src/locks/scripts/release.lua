-- ARGV: name, token. Frees the slot only if this exact grant holds it now.
-- Returns {'released'} | {'not_held', reason}
local token = ARGV[2]
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
redis.call('ZREM', held, token)
if s.held then s.held = s.held - 1 end
set_ended(s, fence, 0)
-- Somebody waits: the freed slot (and any that expired) goes to the queue.
if waiting_count(s) > 0 then
  expire(s, now)
  promote(s, now)
end
finish(s, now)
return {'released'}
