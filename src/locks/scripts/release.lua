-- ARGV: token, grace_ms. Frees the slot only if this exact grant holds it now.
-- Returns 1 released | 0 not held
local token, grace_ms = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
if not live_score(token, now, grace_ms) then return 0 end
redis.call('ZREM', held, token)
local slot = slot_of(token)
if slot and redis.call('SISMEMBER', slots, slot) == 1 then
  redis.call('LPUSH', free, slot)
end
refresh_ttl()
return 1
