-- ARGV: name, permits, replica, fence_floor, new_inc, then per ticket:
-- ticket, lease_ms, wait_left_ms, nonce, arrival_us (0: never queued).
-- A replica re-checks its waiters of this lock (its wake connection came back,
-- an offer came to nothing, one of its tickets was skipped, or the lock was
-- created again): a ticket Redis no longer has is queued again at its own
-- arrival, so it keeps its place in line.
-- Returns {earliest_deadline, now_ms, permits, then per ticket 'q' (queued)
-- | 'o|<token>' (offered: claim it) | 'r' (queued again) | 'x' (permits differ)
-- | 'g' (the request gave up)}
local permits, replica = tonumber(ARGV[2]), ARGV[3]
local now = clock()
local s = whole_state() or create(permits, ARGV[5], tonumber(ARGV[4]), now)
mark_alive(s, replica)
s.caller = replica
expire(s, now)
local result = {0, now.ms, s.permits}
for i = 6, #ARGV, 5 do
  local ticket, nonce, arrival = ARGV[i], ARGV[i + 3], tonumber(ARGV[i + 4])
  local info = redis.call('HGET', meta, 't:' .. ticket)
  local t = info and split(info)
  if t and t[1] == 'o' and redis.call('ZSCORE', held, t[2]) then
    result[#result + 1] = 'o|' .. t[2]
  elseif t and t[1] == 'q' and redis.call('ZSCORE', queue, ticket) then
    result[#result + 1] = 'q'
  elseif gave_up(nonce) then
    result[#result + 1] = 'g'
  elseif s.permits ~= permits then
    result[#result + 1] = 'x'
  else
    if arrival == 0 then arrival = nil end
    enqueue(s, ticket, replica, tonumber(ARGV[i + 1]), now.ms + tonumber(ARGV[i + 2]), nonce, arrival, now)
    result[#result + 1] = 'r'
  end
end
promote(s, now)
result[1] = finish(s, now)
return result
