-- Shared by every lock script (prepended to each one).
-- KEYS[1] free    list    free slot ids; waiters BLPOP here
-- KEYS[2] held    zset    grant tokens "<slot>.<fence>.<nonce>", score = lease deadline (ms, Redis TIME)
-- KEYS[3] meta    hash    permits, fence counter, next_slot counter
-- KEYS[4] slots   set     slot ids that exist now
-- KEYS[5] handoff hash    slot id -> when it was first seen in neither free nor held
local free, held, meta, slots, handoff = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

-- An idle lock's keys vanish a day after its last use (plus the longest lease),
-- so one-off names do not accumulate in Redis forever.
local IDLE_TTL_MS = 90000000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Lua 5.1 prints large numbers in exponent form: format integers explicitly.
local function int(n)
  return string.format('%.0f', n)
end

local function slot_of(token)
  return string.match(token, '^([0-9]+)%.')
end

local function refresh_ttl()
  for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], IDLE_TTL_MS) end
end

-- Moves expired grants back to free. Recreates (under a new id) any slot that
-- has been in neither free nor held for grace_ms: a replica popped it and died
-- before claiming it. The new id makes a late claim of the old one fail.
local function reap(now, grace_ms)
  local expired = redis.call('ZRANGEBYSCORE', held, '-inf', now)
  for _, token in ipairs(expired) do
    redis.call('ZREM', held, token)
    local slot = slot_of(token)
    if slot and redis.call('SISMEMBER', slots, slot) == 1 then
      redis.call('RPUSH', free, slot)
    end
  end
  local accounted = redis.call('LLEN', free) + redis.call('ZCARD', held)
  if accounted ~= redis.call('SCARD', slots) or redis.call('HLEN', handoff) > 0 then
    local present = {}
    for _, slot in ipairs(redis.call('LRANGE', free, 0, -1)) do present[slot] = true end
    for _, token in ipairs(redis.call('ZRANGE', held, 0, -1)) do
      local slot = slot_of(token)
      if slot then present[slot] = true end
    end
    for _, slot in ipairs(redis.call('SMEMBERS', slots)) do
      if present[slot] then
        redis.call('HDEL', handoff, slot)
      else
        local seen = tonumber(redis.call('HGET', handoff, slot))
        if not seen then
          redis.call('HSET', handoff, slot, int(now))
        elseif now - seen >= grace_ms then
          redis.call('SREM', slots, slot)
          redis.call('HDEL', handoff, slot)
          local fresh = tostring(redis.call('HINCRBY', meta, 'next_slot', 1))
          redis.call('SADD', slots, fresh)
          redis.call('RPUSH', free, fresh)
        end
      end
    end
  end
  return #expired
end

local function earliest_deadline()
  local first = redis.call('ZRANGE', held, 0, 0, 'WITHSCORES')
  if first[2] then return tonumber(first[2]) end
  return -1
end

-- Grants a slot popped from free, if it still exists.
local function claim(slot, lease_ms, nonce, now)
  if redis.call('SISMEMBER', slots, slot) == 0 then return nil end
  local fence = redis.call('HINCRBY', meta, 'fence', 1)
  local token = slot .. '.' .. int(fence) .. '.' .. nonce
  local deadline = now + lease_ms
  redis.call('ZADD', held, deadline, token)
  redis.call('HDEL', handoff, slot)
  return {'granted', token, fence, deadline}
end

-- The grant a token names, if its lease is still running; an expired one is reaped.
local function live_score(token, now, grace_ms)
  local score = tonumber(redis.call('ZSCORE', held, token))
  if score and score > now then return score end
  reap(now, grace_ms)
  return nil
end
