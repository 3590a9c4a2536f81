-- ARGV: name, token. Frees the slot only if this exact grant holds it now.
-- Returns {'released'} | {'not_held', reason}
local token = ARGV[2]
local now = now_ms()
local s, fence_or_refusal = live_grant(token, now)
if not s then return fence_or_refusal end
local fence = fence_or_refusal
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
