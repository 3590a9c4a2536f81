-- ARGV: name, ticket, nonce, scan. A waiter gave up (its caller left, or the
-- reply to its acquire was lost): its ticket leaves the queue, a slot offered
-- to it goes to the next ticket, and with scan=1 a grant made for its nonce
-- (an acquire whose reply was lost) is released. Returns the slots handed back.
local ticket, nonce, scan = ARGV[2], ARGV[3], ARGV[4] == '1'
local now = now_ms()
-- Whatever of this request reaches Redis after this, late, is ignored.
bury(nonce, now)
local s = state()
if not s then return 0 end
local freed = 0
local info = redis.call('HGET', meta, 't:' .. ticket)
redis.call('HDEL', meta, 't:' .. ticket)
if redis.call('ZREM', queue, ticket) == 1 and s.waiting then s.waiting = s.waiting - 1 end
if info then
  local t = split(info)
  if t[1] == 'o' and redis.call('ZREM', held, t[3]) == 1 then
    if s.held then s.held = s.held - 1 end
    redis.call('HDEL', meta, 'o:' .. t[2])
    set_ended(s, tonumber(t[2]), 0)
    freed = freed + 1
  end
end
if scan then
  -- O(permits), on this rare path only.
  for _, token in ipairs(redis.call('ZRANGE', held, 0, -1)) do
    local _, fence, token_nonce = token_parts(token)
    if token_nonce == nonce and not redis.call('HGET', meta, 'o:' .. int(fence)) then
      redis.call('ZREM', held, token)
      if s.held then s.held = s.held - 1 end
      set_ended(s, fence, 0)
      freed = freed + 1
    end
  end
end
expire(s, now)
promote(s, now)
finish(s, now)
return freed
