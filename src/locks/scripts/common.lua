-- Shared by every lock script (prepended to each one). docs/locks.md explains the design.
--
-- KEYS[1] meta   hash    inc (incarnation id), permits, fence (last fence), base (first fence
--                        of this incarnation), seq (ticket counter), alarm (deadline the
--                        watchers were last told), w (watchers "replica=wakekey;..."),
--                        d (replicas that left an offer unclaimed "replica=ms;..."),
--                        x (when the keys' TTLs were last refreshed),
--                        t:<ticket> ("q|replica|wake|lease|deadline|nonce" while queued,
--                        "o|fence|token" once offered), o:<fence> ("ticket|replica" while
--                        an offer is unclaimed)
-- KEYS[2] held   zset    grant tokens "<inc>.<fence>.<nonce>" -> deadline (ms, Redis TIME);
--                        an offer is a grant whose deadline is the claim deadline
-- KEYS[3] queue  zset    ticket -> arrival sequence: waiters in arrival order, fleet-wide
-- KEYS[4] ended  string  a bit per fence (fence - base, modulo 2^24): 1 expired, 0 released
-- KEYS[5] gone   zset    nonces of requests that gave up -> until when (ms): a script of
--                        theirs that reaches Redis late (its reply was lost) grants nothing
-- ARGV[1] is always the lock's name (it goes into alarm messages).
--
-- Wake keys (one list per replica, named in a ticket or the watcher list) are
-- the only other keys touched. On a Redis Cluster a script may not touch a key
-- outside its slot: there a wake address is "!" and a channel, and messages
-- are PUBLISHed (see `notify`).
--
-- The hot paths (an acquire or release nobody waits behind) are kept to a few
-- commands: counts are read once per script and kept in the state table, the
-- queue is not looked at when it is empty, and TTLs are refreshed hourly.
local meta, held, queue, ended, gone = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local name = ARGV[1]

-- An idle lock's keys vanish a day after its last use (plus the longest lease).
local IDLE_TTL_MS = 90000000
-- The TTLs are pushed back at most this often (and when a key is created).
local REFRESH_MS = 3600000
-- A wake list nobody reads (its replica died) vanishes after the longest wait.
local WAKE_TTL_MS = 130000
-- An offer not claimed by then is passed on, and its replica's tickets skipped.
local OFFER_MS = 2000
-- How many fences the `ended` bitmap remembers (2 MiB at most).
local WINDOW = 16777216
-- Most queue heads one call skips or offers to, so one script stays short.
local MAX_PROMOTIONS = 256
-- How long a request that gave up is remembered (far beyond any late delivery).
local GONE_TTL_MS = 60000

-- Sends a wake message: onto the replica's list (kept until it is read), or
-- on a cluster ("!channel") published, which the cluster bus carries to the
-- node the replica listens on.
local function notify(wake, message)
  if string.byte(wake, 1) == 33 then
    redis.call('PUBLISH', string.sub(wake, 2), message)
  else
    redis.call('LPUSH', wake, message)
    redis.call('PEXPIRE', wake, WAKE_TTL_MS)
  end
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Lua 5.1 prints large numbers in exponent form: format integers explicitly.
local function int(n)
  return string.format('%.0f', n)
end

-- Fields are never empty, so '+' (Lua 5.1's '*' would also yield empty matches).
local function split(text)
  local parts = {}
  for part in string.gmatch(text, '([^|]+)') do parts[#parts + 1] = part end
  return parts
end

-- "a=1;b=2" lists (watchers, dead replicas) as tables and back.
local function read_list(raw)
  local list = {}
  if raw then
    for key, value in string.gmatch(raw, '([^;=]+)=([^;]*)') do list[key] = value end
  end
  return list
end

local function write_list(s, field, list)
  local parts = {}
  for key, value in pairs(list) do parts[#parts + 1] = key .. '=' .. value end
  if #parts == 0 then
    redis.call('HDEL', meta, field)
    s[field] = nil
  else
    s[field] = table.concat(parts, ';')
    redis.call('HSET', meta, field, s[field])
  end
end

-- The lock's state, or nil when it does not exist; `extra` names one more
-- meta field to read in the same call (its value lands in s.extra).
local function state(extra)
  local m = redis.call('HMGET', meta, 'inc', 'permits', 'fence', 'base', 'alarm', 'w', 'd', 'x', extra or 'inc')
  if not m[1] then return nil end
  return {inc = m[1], permits = tonumber(m[2]), fence = tonumber(m[3]), base = tonumber(m[4]),
    alarm = tonumber(m[5]), w = m[6] or nil, d = m[7] or nil, x = tonumber(m[8]), extra = m[9] or nil}
end

-- Grants in `held`, counted once per script.
local function held_count(s)
  if not s.held then s.held = redis.call('ZCARD', held) end
  return s.held
end

-- Tickets in `queue`, counted once per script.
local function waiting_count(s)
  if not s.waiting then s.waiting = redis.call('ZCARD', queue) end
  return s.waiting
end

-- A new incarnation: whatever an earlier one left (after data loss or an
-- evicted meta key) is wiped, so none of its tokens, offers or tickets count.
-- Fences go on from the Redis clock x 1000 or the replica's floor, whichever is higher.
local function create(permits, inc, floor, now)
  redis.call('DEL', meta, held, queue, ended)
  local start = math.max(now * 1000, floor)
  redis.call('HSET', meta, 'inc', inc, 'permits', permits, 'fence', int(start), 'base', int(start + 1),
    'seq', 0, 'x', int(now))
  redis.call('SETBIT', ended, 0, 0)
  redis.call('PEXPIRE', meta, IDLE_TTL_MS)
  redis.call('PEXPIRE', ended, IDLE_TTL_MS)
  return {inc = inc, permits = permits, fence = start, base = start + 1, x = now, held = 0, waiting = 0}
end

local function token_parts(token)
  local inc, fence, nonce = string.match(token, '^(%x+)%.(%d+)%.(%x+)$')
  return inc, tonumber(fence), nonce
end

local function set_ended(s, fence, bit)
  redis.call('SETBIT', ended, (fence - s.base) % WINDOW, bit)
end

-- Why a token of this incarnation no longer holds: 'expired', 'released' or 'unknown'.
local function reason(s, fence)
  if not fence or fence < s.base or fence > s.fence or s.fence - fence >= WINDOW then
    return 'unknown'
  end
  if redis.call('GETBIT', ended, (fence - s.base) % WINDOW) == 1 then return 'expired' end
  return 'released'
end

local function mark_dead(s, replica, now)
  local dead = read_list(s.d)
  dead[replica] = int(now)
  write_list(s, 'd', dead)
end

-- A replica that calls is alive: its tickets are served again.
local function mark_alive(s, replica)
  if s.d then
    local dead = read_list(s.d)
    if dead[replica] then
      dead[replica] = nil
      write_list(s, 'd', dead)
    end
  end
end

-- A key just created (by a first ZADD) gets its TTL at once.
local function created(key)
  redis.call('PEXPIRE', key, IDLE_TTL_MS)
end

-- Ends every grant whose deadline has passed. An offer that ends unclaimed
-- means its replica is gone or stuck: its other tickets are skipped from now on.
local function expire(s, now)
  local leases = 0
  local due = redis.call('ZRANGEBYSCORE', held, '-inf', now, 'LIMIT', 0, 64)
  for _, token in ipairs(due) do
    redis.call('ZREM', held, token)
    if s.held then s.held = s.held - 1 end
    local _, fence = token_parts(token)
    local offer = fence and redis.call('HGET', meta, 'o:' .. int(fence))
    if offer then
      local offer_parts = split(offer)
      redis.call('HDEL', meta, 'o:' .. int(fence), 't:' .. offer_parts[1])
      mark_dead(s, offer_parts[2], now)
      set_ended(s, fence, 0)
    elseif fence then
      set_ended(s, fence, 1)
      leases = leases + 1
    end
  end
  return leases
end

local function grant(s, nonce, deadline)
  local fence = redis.call('HINCRBY', meta, 'fence', 1)
  s.fence = fence
  local token = s.inc .. '.' .. int(fence) .. '.' .. nonce
  local before = held_count(s)
  redis.call('ZADD', held, deadline, token)
  if before == 0 then created(held) end
  s.held = before + 1
  return token, fence
end

-- Hands free slots to the first live tickets, in arrival order: each gets an
-- offer its replica must claim within OFFER_MS, announced on its wake list.
local function promote(s, now)
  if waiting_count(s) == 0 then return end
  local dead = nil
  for _ = 1, MAX_PROMOTIONS do
    if held_count(s) >= s.permits or s.waiting == 0 then return end
    local head = redis.call('ZRANGE', queue, 0, 0)[1]
    if not head then
      s.waiting = 0
      return
    end
    redis.call('ZREM', queue, head)
    s.waiting = s.waiting - 1
    local info = redis.call('HGET', meta, 't:' .. head)
    if info then
      local t = split(info)
      dead = dead or read_list(s.d)
      if t[1] ~= 'q' or tonumber(t[5]) <= now or dead[t[2]] then
        redis.call('HDEL', meta, 't:' .. head)
      else
        local token, fence = grant(s, t[6], now + OFFER_MS)
        redis.call('HSET', meta, 't:' .. head, 'o|' .. int(fence) .. '|' .. token,
          'o:' .. int(fence), head .. '|' .. t[2])
        notify(t[3], 'o|' .. name .. '|' .. head .. '|' .. token .. '|' .. int(fence))
      end
    end
  end
end

local function earliest()
  local first = redis.call('ZRANGE', held, 0, 0, 'WITHSCORES')
  if first[2] then return tonumber(first[2]) end
  return -1
end

-- Ends every script that changed the lock: while tickets wait, every watching
-- replica must know the earliest deadline (it reaps then); an idle queue
-- forgets its watchers. Returns that deadline (-1: none, or nobody waits);
-- scripts that return it to a watching caller set s.caller, which is then
-- not told again through its wake list.
local function finish(s, now)
  local e = -1
  if waiting_count(s) == 0 then
    if s.alarm or s.w or s.d then redis.call('HDEL', meta, 'w', 'd', 'alarm') end
  else
    e = earliest()
    -- promote() stopped at its budget with slots still free: reap again at once.
    if held_count(s) < s.permits then e = now end
    if e >= 0 and (not s.alarm or s.alarm <= now or e < s.alarm) then
      redis.call('HSET', meta, 'alarm', int(e))
      for replica, wake in pairs(read_list(s.w)) do
        -- The calling replica reads the deadline from the reply (s.caller).
        if replica ~= s.caller then
          notify(wake, 'a|' .. name .. '|' .. int(e) .. '|' .. int(now))
        end
      end
    end
  end
  if not s.x or now - s.x >= REFRESH_MS then
    for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], IDLE_TTL_MS) end
    redis.call('HSET', meta, 'x', int(now))
  end
  return e
end

-- The live grant `token` names: its state, fence and deadline; or, when it
-- does not hold the lock now, nil and the 'not_held' reply to return.
local function live_grant(token, now)
  local inc, fence = token_parts(token)
  if not fence then return nil, {'not_held', 'unknown'} end
  local s = state('o:' .. int(fence))
  if not s or inc ~= s.inc then return nil, {'not_held', 'unknown'} end
  -- An offer's token was never given to a caller.
  if s.extra then return nil, {'not_held', 'unknown'} end
  local deadline = tonumber(redis.call('ZSCORE', held, token))
  if not deadline then return nil, {'not_held', reason(s, fence)} end
  if deadline <= now then
    expire(s, now)
    promote(s, now)
    finish(s, now)
    return nil, {'not_held', 'expired'}
  end
  return s, fence
end

-- Whether the request with this nonce gave up (its script is late: do nothing).
local function gave_up(nonce)
  return redis.call('ZSCORE', gone, nonce) ~= false
end

-- Remembers that the request with this nonce gave up.
local function bury(nonce, now)
  redis.call('ZREMRANGEBYSCORE', gone, '-inf', now)
  redis.call('ZADD', gone, now + GONE_TTL_MS, nonce)
  redis.call('PEXPIRE', gone, GONE_TTL_MS)
end

-- Queues a ticket at the back; its replica watches the lock from now on.
local function enqueue(s, ticket, replica, wake, lease_ms, deadline, nonce)
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  local before = waiting_count(s)
  redis.call('ZADD', queue, seq, ticket)
  if before == 0 then created(queue) end
  s.waiting = before + 1
  redis.call('HSET', meta, 't:' .. ticket,
    'q|' .. replica .. '|' .. wake .. '|' .. int(lease_ms) .. '|' .. int(deadline) .. '|' .. nonce)
  local watchers = read_list(s.w)
  if watchers[replica] ~= wake then
    watchers[replica] = wake
    write_list(s, 'w', watchers)
  end
  mark_alive(s, replica)
end
