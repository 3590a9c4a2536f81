-- ARGV: name, ticket, lease_ms. A waiter's wait ran out: a slot offered to it
-- meanwhile is still its own (the lease starts now); otherwise it leaves the queue.
-- Returns {'granted', token, fence, deadline, now} | {'left', now}
local ticket, lease_ms = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local s = state()
if not s then return {'left', now} end
local info = redis.call('HGET', meta, 't:' .. ticket)
if info then
  local t = split(info)
  if t[1] == 'o' and redis.call('ZSCORE', held, t[3]) then
    local deadline = now + lease_ms
    redis.call('ZADD', held, 'XX', deadline, t[3])
    redis.call('HDEL', meta, 'o:' .. t[2], 't:' .. ticket)
    finish(s, now)
    return {'granted', t[3], tonumber(t[2]), deadline, now}
  end
  redis.call('HDEL', meta, 't:' .. ticket)
end
redis.call('ZREM', queue, ticket)
finish(s, now)
return {'left', now}
