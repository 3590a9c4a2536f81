-- ARGV: name, ticket, token, lease_ms, replica
-- The ticket's replica takes the slot offered to it: the lease starts now.
-- A late claim still counts while nobody has passed the offer on. A repeated
-- claim (its first reply was lost) reports the grant the first one made.
-- Returns {'granted', deadline} | {'gone'}
local ticket, token, lease_ms = ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = clock()
local inc, seq = token_parts(token)
if not seq then return {'gone'} end
local s = whole_state('o:' .. int(seq))
if not s or s.inc ~= inc then return {'gone'} end
local deadline = tonumber(redis.call('ZSCORE', held, token))
if not deadline then return {'gone'} end
if not s.extra then
  -- The token is the capability: a grant that is no longer an offer was claimed with it.
  return {'granted', deadline}
end
if split(s.extra)[1] ~= ticket then return {'gone'} end
deadline = now.ms + lease_ms
redis.call('ZADD', held, 'XX', deadline, token)
redis.call('HDEL', meta, 'o:' .. int(seq), 't:' .. ticket)
mark_alive(s, ARGV[5])
finish(s, now)
return {'granted', deadline}
