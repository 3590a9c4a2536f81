-- ARGV: name, replica. A watcher's alarm went off: end what expired, serve the queue.
-- Returns {exists (1 | 0), expired_leases, earliest_deadline (-1: none), now_ms}
local now = clock()
local s = whole_state()
if not s then return {0, 0, -1, now.ms} end
s.caller = ARGV[2]
local leases = expire(s, now)
promote(s, now)
return {1, leases, finish(s, now), now.ms}
