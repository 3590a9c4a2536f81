-- ARGV: grace_ms. Run by waiters at the earliest lease deadline and periodically.
-- Returns {expired_count, earliest_deadline (-1: none), now}
local now = now_ms()
local expired = reap(now, tonumber(ARGV[1]))
refresh_ttl()
return {expired, earliest_deadline(), now}
