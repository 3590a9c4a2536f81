-- ARGV: name, ticket (or ''), nonce, scan. A request gave up (its caller left,
-- or it could not tell what one of its calls did): whatever of it reaches Redis
-- later grants nothing, its ticket leaves the queue, a slot offered to it goes
-- to the next ticket, and with scan=1 a grant made for its nonce (a reply that
-- was lost) is released. Returns the slots handed back.
local ticket, nonce, scan = ARGV[2], ARGV[3], ARGV[4] == '1'
local now = clock()
bury(nonce, now)
local s = whole_state()
if not s then return 0 end
local freed = 0
local info = ticket ~= '' and redis.call('HGET', meta, 't:' .. ticket)
if info then
  redis.call('HDEL', meta, 't:' .. ticket)
  local t = split(info)
  if t[1] == 'q' then
    if redis.call('ZSCORE', queue, ticket) then dequeue(s, ticket, t[2]) end
  elseif redis.call('ZSCORE', held, t[2]) then
    local _, seq = token_parts(t[2])
    redis.call('HDEL', meta, 'o:' .. int(seq))
    end_grant(s, t[2], seq, RELEASED)
    freed = freed + 1
  end
end
if scan then
  -- O(permits), on this rare path only.
  for _, token in ipairs(redis.call('ZRANGE', held, 0, -1)) do
    local _, seq, _, token_nonce = token_parts(token)
    if token_nonce == nonce and not redis.call('HGET', meta, 'o:' .. int(seq)) then
      end_grant(s, token, seq, RELEASED)
      freed = freed + 1
    end
  end
end
expire(s, now)
promote(s, now)
finish(s, now)
return freed
