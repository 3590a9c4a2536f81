-- ARGV: permits, lease_ms, nonce, grace_ms, try_pop (1: take a free slot now; 0: only prepare)
-- Creates the lock on first use, checks permits, reaps, and grants a free slot if asked.
-- Returns {'granted', token, fence, deadline} | {'mismatch', permits} | {'empty', earliest_deadline, now}
local permits, lease_ms, nonce = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local grace_ms, try_pop = tonumber(ARGV[4]), ARGV[5] == '1'
local now = now_ms()

local existing = tonumber(redis.call('HGET', meta, 'permits'))
if not existing then
  -- Fences start from the clock (x1000) so they keep increasing even after an
  -- idle lock's keys expired and were created again.
  redis.call('HSET', meta, 'permits', permits, 'fence', int(now * 1000), 'next_slot', permits)
  for i = 1, permits do
    redis.call('SADD', slots, tostring(i))
    redis.call('RPUSH', free, tostring(i))
  end
elseif existing ~= permits then
  return {'mismatch', existing}
end

reap(now, grace_ms)
local result = {'empty', earliest_deadline(), now}
if try_pop then
  local slot = redis.call('LPOP', free)
  if slot then result = claim(slot, lease_ms, nonce, now) or result end
end
refresh_ttl()
return result
