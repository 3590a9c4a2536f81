-- ARGV: name, ticket, token, fence. An offer reached a replica whose waiter
-- is no longer there: it goes to the next ticket at once. A claimed grant is
-- never touched. Returns 1 if the offer was passed on, 0 if it was not pending.
local ticket, token, fence = ARGV[2], ARGV[3], ARGV[4]
local now = now_ms()
local s = state()
local offer = s and redis.call('HGET', meta, 'o:' .. fence)
if not offer or split(offer)[1] ~= ticket or redis.call('ZREM', held, token) == 0 then
  return 0
end
if s.held then s.held = s.held - 1 end
redis.call('HDEL', meta, 'o:' .. fence, 't:' .. ticket)
set_ended(s, tonumber(fence), 0)
expire(s, now)
promote(s, now)
finish(s, now)
return 1
