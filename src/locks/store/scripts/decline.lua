-- ARGV: name, ticket, token. An offer reached a replica whose waiter is no
-- longer there: it goes to the next ticket at once. A claimed grant is never
-- touched. Returns 1 if the offer was passed on, 0 if it was not pending.
local ticket, token = ARGV[2], ARGV[3]
local now = clock()
local inc, seq = token_parts(token)
if not seq then return 0 end
local s = whole_state('o:' .. int(seq))
if not s or s.inc ~= inc or not s.extra or split(s.extra)[1] ~= ticket then return 0 end
if not redis.call('ZSCORE', held, token) then return 0 end
redis.call('HDEL', meta, 'o:' .. int(seq), 't:' .. ticket)
end_grant(s, token, seq, RELEASED)
expire(s, now)
promote(s, now)
finish(s, now)
return 1
