-- release(now, token), a call of batch.lua on the lock it selected. Frees the slot
-- only if this exact grant holds it now. Returns {'released'} | {'not_held', reason}
local function release(now, token)
  local s, grant_or_refusal = live_grant(token, now)
  if not s then return grant_or_refusal end
  end_grant(s, token, grant_or_refusal.seq, RELEASED)
  -- Somebody waits: the freed slot (and any that expired) goes to the queue.
  if s.waiting > 0 then
    expire(s, now)
    promote(s, now)
  end
  finish(s, now)
  return {'released'}
end
