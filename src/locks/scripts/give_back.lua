-- ARGV: slot. A slot BLPOP delivered when no local waiter wanted it any more:
-- back to the front of free, so the next waiter anywhere gets it at once.
if redis.call('SISMEMBER', slots, ARGV[1]) == 1 then
  redis.call('HDEL', handoff, ARGV[1])
  redis.call('LPUSH', free, ARGV[1])
  return 1
end
return 0
