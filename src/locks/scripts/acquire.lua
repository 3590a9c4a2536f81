-- ARGV: name, permits, lease_ms, wait_ms, replica, wake, ticket, nonce, fence_floor
-- (A lock this call creates takes the request's nonce as its incarnation id: both are random.)
-- Creates the lock on first use (or after its state was lost), checks permits,
-- grants a free slot when nobody waits, else queues a ticket (wait_ms > 0).
-- Returns {'granted', token, fence, deadline, now} | {'mismatch', permits}
--       | {'busy', now} | {'queued', earliest_deadline, now} | {'gone', now} (the request
--       already gave up: this call arrived after its reply was given up on)
local permits, lease_ms, wait_ms = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local replica, wake, ticket, nonce = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local now = now_ms()
if gave_up(nonce) then return {'gone', now} end
local s = state() or create(permits, nonce, tonumber(ARGV[9]), now)
if s.permits ~= permits then return {'mismatch', s.permits} end

-- A free slot with nobody queued is the common case: no reaping needed.
if held_count(s) >= s.permits or waiting_count(s) > 0 then
  expire(s, now)
  promote(s, now)
end
if held_count(s) < s.permits and waiting_count(s) == 0 then
  local deadline = now + lease_ms
  local token, fence = grant(s, nonce, deadline)
  finish(s, now)
  return {'granted', token, fence, deadline, now}
end
if wait_ms == 0 then
  finish(s, now)
  return {'busy', now}
end
enqueue(s, ticket, replica, wake, lease_ms, now + wait_ms, nonce)
s.caller = replica
return {'queued', finish(s, now), now}
