-- ARGV: name, ticket, lease_ms. A waiter's wait ran out: a slot offered to it
-- meanwhile is still its own (the lease starts now); otherwise it leaves the queue.
-- Returns {'granted', token, fence, deadline} | {'left'}
local ticket, lease_ms = ARGV[2], tonumber(ARGV[3])
local now = clock()
local s = whole_state()
if not s then return {'left'} end
local info = redis.call('HGET', meta, 't:' .. ticket)
if info then
  local t = split(info)
  redis.call('HDEL', meta, 't:' .. ticket)
  if t[1] == 'o' then
    if redis.call('ZSCORE', held, t[2]) then
      local _, seq, fence = token_parts(t[2])
      local deadline = now.ms + lease_ms
      redis.call('ZADD', held, 'XX', deadline, t[2])
      redis.call('HDEL', meta, 'o:' .. int(seq))
      finish(s, now)
      return {'granted', t[2], fence, deadline}
    end
  elseif redis.call('ZSCORE', queue, ticket) then
    dequeue(s, ticket, t[2])
  end
end
finish(s, now)
return {'left'}
