-- acquire(now, permits, lease_ms, wait_ms, replica, ticket, nonce, fence_floor), a call
-- of batch.lua on the lock it selected. (A lock this call creates takes the request's
-- nonce as its incarnation id: both are random.)
-- Creates the lock on first use (or after its state was lost), checks permits,
-- grants a free slot when nobody waits, else queues a ticket (wait_ms > 0).
-- Returns {'granted', token, fence, deadline} | {'mismatch', permits} | {'busy'}
--       | {'queued', earliest_deadline, now_ms, arrival_us} | {'gone'} (the request
--       already gave up: this call arrived after its reply was given up on)
local function acquire(now, permits, lease_ms, wait_ms, replica, ticket, nonce, floor)
  permits, lease_ms, wait_ms, floor = tonumber(permits), tonumber(lease_ms), tonumber(wait_ms),
    tonumber(floor)
  if gave_up(nonce) then return {'gone'} end
  local s = whole_state() or create(permits, nonce, floor, now)
  if s.permits ~= permits then return {'mismatch', s.permits} end

  -- A free slot with nobody queued is the common case: no reaping needed.
  if held_count(s) >= s.permits or s.waiting > 0 then
    expire(s, now)
    promote(s, now)
  end
  if held_count(s) < s.permits and s.waiting == 0 then
    local deadline = now.ms + lease_ms
    local token, fence = grant(s, nonce, deadline, now, floor)
    finish(s, now)
    return {'granted', token, fence, deadline}
  end
  if wait_ms == 0 then
    finish(s, now)
    return {'busy'}
  end
  local arrival = enqueue(s, ticket, replica, lease_ms, now.ms + wait_ms, nonce, nil, now)
  s.caller = replica
  return {'queued', finish(s, now), now.ms, arrival}
end
