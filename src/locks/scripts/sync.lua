-- ARGV: name, permits, replica, wake, fence_floor, new_inc, then per ticket:
-- ticket, lease_ms, wait_ms left, nonce. A replica re-checks its waiters
-- (after its wake connection dropped, or an offer was lost): tickets Redis
-- no longer has (state lost, or skipped as dead) are queued again at the back.
-- Returns {earliest_deadline, now, permits, then per ticket 'q' (queued) | 'o|fence|token'
-- (offered) | 'r' (queued again) | 'x' (permits differ) | 'g' (the request gave up)}
local permits, replica, wake = tonumber(ARGV[2]), ARGV[3], ARGV[4]
local now = now_ms()
local s = state() or create(permits, ARGV[6], tonumber(ARGV[5]), now)
mark_alive(s, replica)
s.caller = replica
expire(s, now)
local result = {0, now, s.permits}
for i = 7, #ARGV, 4 do
  local ticket = ARGV[i]
  local info = redis.call('HGET', meta, 't:' .. ticket)
  if info and string.sub(info, 1, 1) == 'o' then
    result[#result + 1] = 'o|' .. string.sub(info, 3)
  elseif info and redis.call('ZSCORE', queue, ticket) then
    result[#result + 1] = 'q'
  elseif gave_up(ARGV[i + 3]) then
    result[#result + 1] = 'g'
  elseif s.permits == permits then
    enqueue(s, ticket, replica, wake, tonumber(ARGV[i + 1]), now + tonumber(ARGV[i + 2]), ARGV[i + 3])
    result[#result + 1] = 'r'
  else
    result[#result + 1] = 'x'
  end
end
promote(s, now)
result[1] = finish(s, now)
return result
