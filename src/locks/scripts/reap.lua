-- ARGV: name, replica. A watcher's alarm went off: end what expired, serve the queue.
-- Returns {expired_leases, earliest_deadline (-1: none), now}
local now = now_ms()
local s = state()
if not s then return {0, -1, now} end
s.caller = ARGV[2]
local leases = expire(s, now)
promote(s, now)
return {leases, finish(s, now), now}
