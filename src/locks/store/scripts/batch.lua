-- The acquires and releases of many requests in one script run (the service
-- sends together the calls that meet while an earlier run is on its way):
-- ARGV lists the calls, each as its kind ('a' acquire, 'r' release), its lock's
-- name and its arguments (acquire.lua, release.lua); KEYS holds the five keys of
-- each call's lock, in the same order. The calls run one after the other, as
-- separate scripts would, on one reading of the clock (nothing else runs between
-- them). Returns one reply per call; a call that fails (a Redis error) gets
-- {'error', message} as its reply (not an error reply: a client reads an array
-- holding one as a failure of the whole) and the calls after it still run.
local CALLS = {a = {run = acquire, args = 7}, r = {run = release, args = 1}}
local now = clock()
local replies, at = {}, 1
for call = 1, #KEYS / 5 do
  local kind = CALLS[ARGV[at]]
  use_lock(5 * call - 4, ARGV[at + 1])
  local ok, reply = pcall(kind.run, now, unpack(ARGV, at + 2, at + 1 + kind.args))
  if not ok then reply = {'error', type(reply) == 'table' and reply.err or tostring(reply)} end
  replies[call] = reply
  at = at + 2 + kind.args
end
return replies
