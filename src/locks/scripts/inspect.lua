-- ARGV: name, token (or ''). What the lock looks like now (nothing changes).
-- Returns {permits, held, waiting, fence, now, {fence, deadline, ...}, token_state, token_deadline}
-- with permits = -1 when the lock does not exist; token_state 'held' | reason | ''.
local token = ARGV[2]
local now = now_ms()
local s = state()
if not s then return {-1, 0, 0, -1, now, {}, token ~= '' and 'unknown' or '', -1} end
local holders = {}
local live = 0
for _, entry in ipairs(redis.call('ZRANGEBYSCORE', held, '(' .. int(now), '+inf', 'WITHSCORES')) do
  holders[#holders + 1] = entry
end
local grants = {}
for i = 1, #holders, 2 do
  local _, fence = token_parts(holders[i])
  grants[#grants + 1] = int(fence)
  grants[#grants + 1] = holders[i + 1]
  live = live + 1
end
local token_state, token_deadline = '', -1
if token ~= '' then
  local inc, fence = token_parts(token)
  local deadline = tonumber(redis.call('ZSCORE', held, token))
  if inc ~= s.inc then
    token_state = 'unknown'
  elseif deadline and deadline > now and redis.call('HEXISTS', meta, 'o:' .. int(fence)) == 0 then
    token_state, token_deadline = 'held', deadline
  elseif deadline then
    token_state = deadline <= now and 'expired' or 'unknown'
  else
    token_state = reason(s, fence)
  end
end
return {s.permits, live, redis.call('ZCARD', queue), s.fence, now, grants, token_state, token_deadline}
