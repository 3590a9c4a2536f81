-- ARGV: name, token ('' for none), holders ('1': list them, '0': counts only).
-- What the lock looks like now (nothing changes). Returns {permits, held, waiting,
-- fence, now_ms, {fence, deadline, ...}, token_state, token_deadline} with
-- permits = -1 when the lock does not exist; token_state 'held' | reason | ''.
-- O(log n), plus O(held) when the holders are listed.
local token, listed = ARGV[2], ARGV[3] == '1'
local now = clock()
local s = whole_state()
if not s then return {-1, 0, 0, -1, now.ms, {}, token ~= '' and 'unknown' or '', -1} end
local live = redis.call('ZCOUNT', held, '(' .. int(now.ms), '+inf') - 1
local grants = {}
if listed then
  local entries = redis.call('ZRANGEBYSCORE', held, '(' .. int(now.ms), '+inf', 'WITHSCORES')
  for i = 1, #entries, 2 do
    local _, _, fence = token_parts(entries[i])
    if fence then
      grants[#grants + 1] = int(fence)
      grants[#grants + 1] = entries[i + 1]
    end
  end
end
local token_state, token_deadline = '', -1
if token ~= '' then
  local inc, seq = token_parts(token)
  local deadline = tonumber(redis.call('ZSCORE', held, token))
  if not seq or inc ~= s.inc then
    token_state = 'unknown'
  elseif deadline and deadline > now.ms and redis.call('HEXISTS', meta, 'o:' .. int(seq)) == 0 then
    token_state, token_deadline = 'held', deadline
  elseif deadline then
    token_state = deadline <= now.ms and 'expired' or 'unknown'
  else
    token_state = reason(s, seq)
  end
end
return {s.permits, live, s.waiting, s.fence, now.ms, grants, token_state, token_deadline}
