-- ARGV: name, ticket, token, fence, lease_ms, replica
-- The ticket's replica takes the slot offered to it: the lease starts now.
-- A late claim still counts while nobody has passed the offer on. A repeated
-- claim (its first reply was lost) reports the grant the first one made.
-- Returns {'granted', deadline, now} | {'gone', now}
local ticket, token, fence, lease_ms = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local now = now_ms()
local s = state('o:' .. fence)
if not s then return {'gone', now} end
local deadline = tonumber(redis.call('ZSCORE', held, token))
if not deadline then return {'gone', now} end
if not s.extra then
  -- The token is the capability: a grant that is no longer an offer was claimed with it.
  return {'granted', deadline, now}
end
if split(s.extra)[1] ~= ticket then return {'gone', now} end
deadline = now + lease_ms
redis.call('ZADD', held, 'XX', deadline, token)
redis.call('HDEL', meta, 'o:' .. fence, 't:' .. ticket)
mark_alive(s, ARGV[6])
finish(s, now)
return {'granted', deadline, now}
