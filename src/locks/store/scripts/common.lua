-- Shared by every lock script (prepended to each one). docs/locks.md explains the design.
--
-- KEYS[1] meta   hash    inc (incarnation id), permits, fence (the last fence granted),
--                        seq (grants made in this incarnation), arr (the last arrival given
--                        to a ticket, µs), alarm (the deadline the watchers were last told),
--                        w (replicas with tickets queued "replica=count;..."),
--                        d (of those, replicas counted as gone "replica=ms;..."),
--                        x (when the keys' TTLs were last pushed back),
--                        t:<ticket> (a waiting request: "q|replica|lease|deadline|nonce|arrival"
--                        while queued, "o|token|replica|lease|deadline|nonce|arrival" once offered),
--                        o:<seq> ("ticket|replica" while the offer of grant <seq> is unclaimed)
-- KEYS[2] held   zset    grant tokens "<inc>.<seq>.<fence>.<nonce>" -> deadline (ms, Redis
--                        TIME); an offer is a grant whose deadline is its claim deadline
-- KEYS[3] queue  zset    ticket -> arrival (µs): the waiting requests in arrival order, fleet-wide
-- KEYS[4] ended  string  2 bits per grant (seq modulo WINDOW): the first set when it was
--                        released, the second when it expired, neither when not known
-- KEYS[5] gone   zset    nonces of requests that gave up -> until when (ms): a script of
--                        theirs that reaches Redis late (its reply was lost) grants nothing
-- ARGV[1] is always the lock's name.
--
-- A lock is whole or it does not exist: `held` and `queue` each keep a sentinel member
-- ('~', score +inf) for as long as `meta` exists, so a lock that lost any of the three
-- (eviction, a partial loss) is seen as missing and the next script that creates a lock
-- starts a new incarnation over whatever is left. `ended` and `gone` only remember the
-- past: losing them makes 409 reasons 'unknown' and nothing else.
--
-- Messages go out on Pub/Sub channels under the keys' prefix, which a script may publish
-- to on a Redis Cluster too: "<prefix>wake:<replica>" (what one replica must know:
-- offers, alarms, skipped tickets) and "<prefix>lock-events" (every replica: a lock was
-- created, so replicas whose waiters it lost queue them again).
local meta, held, queue, ended, gone = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local name = ARGV[1]

-- batch.lua runs many calls, each on its own lock: it points the functions
-- below at the lock of the call (its five keys from KEYS[first], and its name).
local function use_lock(first, lock_name)
  meta, held, queue, ended, gone = KEYS[first], KEYS[first + 1], KEYS[first + 2], KEYS[first + 3],
    KEYS[first + 4]
  name = lock_name
end

-- An idle lock's keys vanish a day after its last use (plus the longest lease).
local IDLE_TTL_MS = 90000000
-- The TTLs are pushed back at most this often (and when a key is created).
local REFRESH_MS = 3600000
-- An offer not claimed by then is passed on, and its replica's tickets skipped.
local OFFER_MS = 2000
-- How many grants the `ended` bits remember (2 bits each: 4 MiB at most).
local WINDOW = 16777216
-- Most queue heads one call skips or offers to, so one script stays short.
local MAX_PROMOTIONS = 256
-- How long a request that gave up is remembered (far beyond any late delivery).
local GONE_TTL_MS = 60000
-- The member `held` and `queue` keep while the lock exists.
local SENTINEL = '~'
-- How a grant ended: which of its two bits in `ended`.
local RELEASED, EXPIRED = 0, 1

-- Redis' clock: µs (fences, arrivals) and ms (deadlines). Both fit a double exactly.
local function clock()
  local t = redis.call('TIME')
  local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  return {us = us, ms = math.floor(us / 1000)}
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

-- The keys' prefix, which the channels share ("<prefix>lock3:{<name>}:meta").
local function prefix()
  return string.sub(meta, 1, #meta - #name - #'lock3:{}:meta')
end

local function notify(replica, message)
  redis.call('PUBLISH', prefix() .. 'wake:' .. replica, message)
end

local function announce(message)
  redis.call('PUBLISH', prefix() .. 'lock-events', message)
end

-- "a=1;b=2" lists (watchers, replicas counted as gone) as tables and back.
local function read_list(raw)
  local list = {}
  if raw then
    for key, value in string.gmatch(raw, '([^;=]+)=([^;]*)') do list[key] = value end
  end
  return list
end

local function write_list(list)
  local parts = {}
  for key, value in pairs(list) do parts[#parts + 1] = key .. '=' .. value end
  if #parts == 0 then return nil end
  return table.concat(parts, ';')
end

-- Grants in `held` (counted once per script, when first needed); -1 when
-- `held` is gone (its sentinel with it).
local function held_count(s)
  if not s.held then s.held = redis.call('ZCARD', held) - 1 end
  return s.held
end

-- The lock's state, or nil when `meta` or `queue` is missing; `extra` names
-- one more meta field to read in the same call (its value lands in s.extra).
-- `held` is counted when first needed: a script that finds a token in it
-- knows it is there; the others read the state through `whole_state`.
local function state(extra)
  local m = redis.call('HMGET', meta, 'inc', 'permits', 'fence', 'seq', 'arr', 'alarm', 'w', 'd', 'x',
    extra or 'inc')
  if not m[1] then return nil end
  local waiting = redis.call('ZCARD', queue)
  if waiting == 0 then return nil end
  return {inc = m[1], permits = tonumber(m[2]), fence = tonumber(m[3]), seq = tonumber(m[4]),
    arr = tonumber(m[5]), alarm = tonumber(m[6]), w = m[7] or nil, d = m[8] or nil,
    x = tonumber(m[9]), extra = m[10] or nil, waiting = waiting - 1}
end

-- The lock's state when all three of its keys are there, else nil.
local function whole_state(extra)
  local s = state(extra)
  if s and held_count(s) < 0 then return nil end
  return s
end

-- The watcher and gone lists as tables (read from meta when first needed).
local function lists(s)
  if type(s.w) ~= 'table' then
    s.w, s.d = read_list(s.w), read_list(s.d)
  end
end

-- A new incarnation: whatever an earlier one left (after data loss, or a key
-- evicted) is wiped, so none of its tokens, offers or tickets count; every
-- replica hears of it, so waiters the old state held are queued again.
local function create(permits, inc, floor, now)
  redis.call('DEL', meta, held, queue, ended)
  local fence = math.max(floor, now.us - 1)
  redis.call('HSET', meta, 'inc', inc, 'permits', permits, 'fence', int(fence), 'seq', 0, 'arr', 0,
    'x', int(now.ms))
  redis.call('ZADD', held, 'inf', SENTINEL)
  redis.call('ZADD', queue, 'inf', SENTINEL)
  redis.call('SETBIT', ended, 0, 0)
  for _, key in ipairs({meta, held, queue, ended}) do redis.call('PEXPIRE', key, IDLE_TTL_MS) end
  announce('c|' .. name)
  return {inc = inc, permits = permits, fence = fence, seq = 0, arr = 0, w = {}, d = {}, x = now.ms,
    held = 0, waiting = 0}
end

-- inc, seq, fence, nonce of a token we minted (nil for anything else).
local function token_parts(token)
  local inc, seq, fence, nonce = string.match(token, '^(%x+)%.(%d+)%.(%d+)%.(%x+)$')
  return inc, tonumber(seq), tonumber(fence), nonce
end

-- The first of a grant's two bits in `ended`.
local function ended_bit(seq)
  return 2 * (seq % WINDOW)
end

-- Why a token of this incarnation whose grant is not in `held` does not hold:
-- 'released', 'expired', or 'unknown' (never granted, too long ago, or lost).
local function reason(s, seq)
  if not seq or seq < 1 or seq > s.seq or s.seq - seq >= WINDOW then return 'unknown' end
  local bit = ended_bit(seq)
  if redis.call('GETBIT', ended, bit + RELEASED) == 1 then return 'released' end
  if redis.call('GETBIT', ended, bit + EXPIRED) == 1 then return 'expired' end
  return 'unknown'
end

-- Grants a slot until `deadline`. Its fence is above the last one, above the
-- Redis clock in µs and above the calling replica's floor, so fences go on
-- rising after a failover to a replica that had not seen the latest grants.
local function grant(s, nonce, deadline, now, floor)
  local seq = s.seq + 1
  local fence = math.max(s.fence + 1, now.us, (floor or 0) + 1)
  s.seq, s.fence = seq, fence
  local seq_text, fence_text = int(seq), int(fence)
  redis.call('HSET', meta, 'seq', seq_text, 'fence', fence_text)
  -- The bits of a grant WINDOW earlier are this one's now.
  if seq > WINDOW then
    local bit = ended_bit(seq)
    redis.call('SETBIT', ended, bit + RELEASED, 0)
    redis.call('SETBIT', ended, bit + EXPIRED, 0)
  end
  local token = s.inc .. '.' .. seq_text .. '.' .. fence_text .. '.' .. nonce
  local before = held_count(s)
  redis.call('ZADD', held, deadline, token)
  s.held = before + 1
  return token, fence, seq
end

-- Ends a grant that is in `held`.
local function end_grant(s, token, seq, how)
  redis.call('ZREM', held, token)
  if s.held then s.held = s.held - 1 end
  if seq then redis.call('SETBIT', ended, ended_bit(seq) + how, 1) end
end

-- Watchers are the replicas with tickets queued, counted: they are told the
-- lock's next deadline. A replica counted as gone is one of them.
local function watcher_joined(s, replica)
  lists(s)
  s.w[replica] = tostring((tonumber(s.w[replica]) or 0) + 1)
  s.lists_changed = true
end

local function watcher_left(s, replica)
  lists(s)
  local left = (tonumber(s.w[replica]) or 1) - 1
  if left > 0 then s.w[replica] = tostring(left) else s.w[replica], s.d[replica] = nil, nil end
  s.lists_changed = true
end

local function mark_dead(s, replica, now)
  lists(s)
  if s.w[replica] then
    s.d[replica] = int(now.ms)
    s.lists_changed = true
  end
end

-- A replica that calls is alive: its tickets are offered again.
local function mark_alive(s, replica)
  if not s.d then return end
  lists(s)
  if s.d[replica] then
    s.d[replica] = nil
    s.lists_changed = true
  end
end

-- Takes a ticket out of the queue (it was there).
local function dequeue(s, ticket, replica)
  redis.call('ZREM', queue, ticket)
  s.waiting = s.waiting - 1
  watcher_left(s, replica)
end

-- Queues a ticket: at `arrival` when it had a place before (it is queued
-- again after a loss or a skip, and keeps its place), else at the back.
local function enqueue(s, ticket, replica, lease_ms, deadline, nonce, arrival, now)
  if not arrival then arrival = math.max(now.us, s.arr + 1) end
  if arrival > s.arr then
    s.arr = arrival
    redis.call('HSET', meta, 'arr', int(arrival))
  end
  redis.call('ZADD', queue, arrival, ticket)
  s.waiting = s.waiting + 1
  redis.call('HSET', meta, 't:' .. ticket, 'q|' .. replica .. '|' .. int(lease_ms) .. '|' .. int(deadline)
    .. '|' .. nonce .. '|' .. int(arrival))
  watcher_joined(s, replica)
  mark_alive(s, replica)
  return arrival
end

-- Ends every grant whose deadline has passed. An offer that ends unclaimed
-- means its replica is gone or stuck: its other tickets are skipped from now on.
local function expire(s, now)
  local leases = 0
  local due = redis.call('ZRANGEBYSCORE', held, '-inf', now.ms, 'LIMIT', 0, 64)
  for _, token in ipairs(due) do
    local _, seq = token_parts(token)
    local offer = seq and redis.call('HGET', meta, 'o:' .. int(seq))
    if offer then
      local o = split(offer)
      redis.call('HDEL', meta, 'o:' .. int(seq), 't:' .. o[1])
      mark_dead(s, o[2], now)
      end_grant(s, token, seq, RELEASED)
    else
      end_grant(s, token, seq, EXPIRED)
      leases = leases + 1
    end
  end
  return leases
end

-- Hands free slots to the first live tickets, in arrival order: each gets an
-- offer its replica must claim within OFFER_MS. A ticket whose replica is
-- counted as gone is skipped, and its replica told (if it was only paused,
-- it queues the ticket again, at its place).
local function promote(s, now)
  for _ = 1, MAX_PROMOTIONS do
    if s.waiting == 0 or held_count(s) >= s.permits then return end
    local head = redis.call('ZRANGE', queue, 0, 0)[1]
    local info = redis.call('HGET', meta, 't:' .. head)
    local t = info and split(info)
    if not t or t[1] ~= 'q' then
      redis.call('ZREM', queue, head)
      s.waiting = s.waiting - 1
    else
      local replica = t[2]
      lists(s)
      local dead = s.d[replica]
      dequeue(s, head, replica)
      if tonumber(t[4]) <= now.ms then
        redis.call('HDEL', meta, 't:' .. head)
      elseif dead then
        redis.call('HDEL', meta, 't:' .. head)
        notify(replica, 's|' .. name .. '|' .. head)
      else
        local token, _, seq = grant(s, t[5], now.ms + OFFER_MS, now, 0)
        redis.call('HSET', meta, 't:' .. head, 'o|' .. token .. '|' .. replica .. '|' .. t[3] .. '|' .. t[4]
          .. '|' .. t[5] .. '|' .. t[6], 'o:' .. int(seq), head .. '|' .. replica)
        notify(replica, 'o|' .. name .. '|' .. head .. '|' .. token)
      end
    end
  end
end

local function earliest()
  local first = redis.call('ZRANGE', held, 0, 0, 'WITHSCORES')
  if first[1] ~= SENTINEL then return tonumber(first[2]) end
  return -1
end

-- Ends every script that changed the lock: while tickets wait, every watching
-- replica must know the earliest deadline (it reaps then). Returns that
-- deadline (-1: none, or nobody waits); scripts that return it to a watching
-- caller set s.caller, which is then not told again.
local function finish(s, now)
  local e = -1
  if s.waiting == 0 then
    if s.alarm then redis.call('HDEL', meta, 'alarm') end
  else
    e = earliest()
    -- promote() stopped at its budget with slots still free: reap again at once.
    if held_count(s) < s.permits then e = now.ms end
    if e >= 0 and (not s.alarm or s.alarm <= now.ms or e < s.alarm) then
      redis.call('HSET', meta, 'alarm', int(e))
      lists(s)
      for replica in pairs(s.w) do
        if replica ~= s.caller then notify(replica, 'a|' .. name .. '|' .. int(e) .. '|' .. int(now.ms)) end
      end
    end
  end
  if s.lists_changed then
    -- Only replicas with tickets queued are listed (and counted as gone).
    for replica in pairs(s.d) do
      if not s.w[replica] then s.d[replica] = nil end
    end
    local w, d = write_list(s.w), write_list(s.d)
    if w then redis.call('HSET', meta, 'w', w) else redis.call('HDEL', meta, 'w') end
    if d then redis.call('HSET', meta, 'd', d) else redis.call('HDEL', meta, 'd') end
  end
  if not s.x or now.ms - s.x >= REFRESH_MS then
    for _, key in ipairs({meta, held, queue, ended}) do redis.call('PEXPIRE', key, IDLE_TTL_MS) end
    redis.call('HSET', meta, 'x', int(now.ms))
  end
  return e
end

-- The live grant `token` names: the lock's state and the grant's seq and
-- fence; or, when it does not hold the lock now, nil and the reply to return.
-- A token whose lock does not exist is announced: if Redis lost the lock,
-- replicas with waiters on it queue them again.
local function live_grant(token, now)
  local inc, seq, fence = token_parts(token)
  if not seq then return nil, {'not_held', 'unknown'} end
  local s = state('o:' .. int(seq))
  if not s then
    announce('c|' .. name)
    return nil, {'not_held', 'unknown'}
  end
  if inc ~= s.inc then return nil, {'not_held', 'unknown'} end
  -- An offer's token was never given to a caller.
  if s.extra then return nil, {'not_held', 'unknown'} end
  local deadline = tonumber(redis.call('ZSCORE', held, token))
  if not deadline then return nil, {'not_held', reason(s, seq)} end
  if deadline <= now.ms then
    expire(s, now)
    promote(s, now)
    finish(s, now)
    return nil, {'not_held', 'expired'}
  end
  return s, {seq = seq, fence = fence}
end

-- Whether the request with this nonce gave up (its script is late: do nothing).
local function gave_up(nonce)
  return redis.call('ZSCORE', gone, nonce) ~= false
end

-- Remembers that the request with this nonce gave up.
local function bury(nonce, now)
  redis.call('ZREMRANGEBYSCORE', gone, '-inf', now.ms)
  redis.call('ZADD', gone, now.ms + GONE_TTL_MS, nonce)
  redis.call('PEXPIRE', gone, GONE_TTL_MS)
end
