-- ARGV: slot, lease_ms, nonce. After BLPOP handed this replica a slot.
-- Returns {'granted', token, fence, deadline} | {'gone'} (the slot was recreated meanwhile)
local now = now_ms()
local result = claim(ARGV[1], tonumber(ARGV[2]), ARGV[3], now) or {'gone'}
refresh_ttl()
return result
