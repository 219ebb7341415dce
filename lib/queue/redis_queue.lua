-- The Redis queue's script (redis_queue_script.h states its protocol, docs/redis-queue.md the
-- model). Embedded in the build as kRedisQueueScript, loaded with SCRIPT LOAD, run with
-- EVALSHA: each call is one atomic step over the app's queue, whichever replica runs it.
--
-- KEYS, all in one hash slot:
--   1 entries   hash   pair -> cmsgpack {time, first_seen, next_try, attempts, version, caller,
--                      claim, error_code, error_info}; claim 0 = not claimed
--   2 due       zset   unclaimed pairs by next_try_ms (ties: by pair, i.e. report then peer)
--   3 claimed   zset   claimed pairs by lease expiry (Redis' own clock, ms)
--   4 seen      zset   pending pairs by first_seen_ms (the oldest entry)
--   5 callers   hash   caller -> pending entries it created
--   6 dead      hash   pair -> cmsgpack {time, caller, first_seen, dead_at, attempts,
--                      error_code, error_info}
--   7 order     zset   dead letters, every score 0, member "<dead_at 13 digits>\n<pair>":
--                      lexicographic order is (dead_at, report, peer), the listing's
--   8 seq       string the last claim id handed out
-- A pair is "<report>\n<peer>": accounts hold no control character.
--
-- Numbers go back to Redis through string.format('%d'): Lua's own conversion keeps 14 digits.
local E, DUE, CLAIMED, SEEN, CALLERS, DEAD, ORDER, SEQ =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local op = ARGV[1]

local function d(x) return string.format('%d', x) end

local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function get(pair)
  local v = redis.call('HGET', E, pair)
  if not v then return nil end
  local e = cmsgpack.unpack(v)
  return {time = e[1], first_seen = e[2], next_try = e[3], attempts = e[4], version = e[5],
          caller = e[6], claim = e[7], error_code = e[8], error_info = e[9]}
end

local function put(pair, e)
  redis.call('HSET', E, pair, cmsgpack.pack({e.time, e.first_seen, e.next_try, e.attempts,
    e.version, e.caller, e.claim, e.error_code, e.error_info}))
end

local function get_dead(pair)
  local v = redis.call('HGET', DEAD, pair)
  if not v then return nil end
  local x = cmsgpack.unpack(v)
  return {time = x[1], caller = x[2], first_seen = x[3], dead_at = x[4], attempts = x[5],
          error_code = x[6], error_info = x[7]}
end

local function order_member(dead_at, pair) return string.format('%013d', dead_at) .. '\n' .. pair end

local function remove_dead(pair, x)
  redis.call('HDEL', DEAD, pair)
  redis.call('ZREM', ORDER, order_member(x.dead_at, pair))
end

-- Drops the pair's dead letter when its time is at most `time`.
local function drop_covered_dead(pair, time)
  local x = get_dead(pair)
  if x and x.time <= time then remove_dead(pair, x) end
end

local function remove_entry(pair, e)
  redis.call('HDEL', E, pair)
  redis.call('ZREM', DUE, pair)
  redis.call('ZREM', CLAIMED, pair)
  redis.call('ZREM', SEEN, pair)
  if redis.call('HINCRBY', CALLERS, e.caller, -1) <= 0 then redis.call('HDEL', CALLERS, e.caller) end
end

local function add_entry(pair, e)
  put(pair, e)
  redis.call('ZADD', DUE, d(e.next_try), pair)
  redis.call('ZADD', SEEN, d(e.first_seen), pair)
  redis.call('HINCRBY', CALLERS, e.caller, 1)
end

-- Unclaims an entry, due at its next_try.
local function unclaim(pair, e)
  e.claim = 0
  put(pair, e)
  redis.call('ZREM', CLAIMED, pair)
  redis.call('ZADD', DUE, d(e.next_try), pair)
end

local function counts() return {redis.call('HLEN', E), redis.call('HLEN', DEAD)} end

-- enqueue n {report peer time caller arrived}*n
--   -> {pending, dead, result*n}: 0 new, 1 merged, 2 merged and the time raised
if op == 'enqueue' then
  local n = tonumber(ARGV[2])
  local results = {}
  for i = 0, n - 1 do
    local b = 3 + i * 5
    local pair = ARGV[b] .. '\n' .. ARGV[b + 1]
    local time = tonumber(ARGV[b + 2])
    local e = get(pair)
    if e then
      if time > e.time then
        e.time = time
        e.version = e.version + 1
        put(pair, e)
        results[#results + 1] = 2
      else
        results[#results + 1] = 1
      end
    else
      local arrived = tonumber(ARGV[b + 4])
      add_entry(pair, {time = time, first_seen = arrived, next_try = arrived, attempts = 0,
                       version = 0, caller = ARGV[b + 3], claim = 0, error_code = 0,
                       error_info = ''})
      results[#results + 1] = 0
    end
  end
  local c = counts()
  local out = {c[1], c[2]}
  for _, r in ipairs(results) do out[#out + 1] = r end
  return out
end

-- claim max now_ms lease_ms
--   -> {pending, dead, expired, {claim report peer time caller first_seen next_try attempts
--      version}*}: first returns the claims whose lease expired to the due entries, then
--      claims up to max due entries, oldest next_try first.
if op == 'claim' then
  local max, now_ms, lease = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local rnow = redis_now()
  local expired = 0
  for _, pair in ipairs(redis.call('ZRANGEBYSCORE', CLAIMED, '-inf', d(rnow), 'LIMIT', 0, 1000)) do
    local e = get(pair)
    if e then unclaim(pair, e) else redis.call('ZREM', CLAIMED, pair) end
    expired = expired + 1
  end
  local out = {0, 0, expired}
  local seq = tonumber(redis.call('GET', SEQ) or '0')
  for _, pair in ipairs(redis.call('ZRANGEBYSCORE', DUE, '-inf', d(now_ms), 'LIMIT', 0, max)) do
    local e = get(pair)
    redis.call('ZREM', DUE, pair)
    if e then
      seq = seq + 1
      e.claim = seq
      put(pair, e)
      redis.call('ZADD', CLAIMED, d(rnow + lease), pair)
      local nl = string.find(pair, '\n', 1, true)
      out[#out + 1] = {d(seq), string.sub(pair, 1, nl - 1), string.sub(pair, nl + 1), d(e.time),
                       e.caller, d(e.first_seen), d(e.next_try), e.attempts, d(e.version)}
    end
  end
  redis.call('SET', SEQ, d(seq))
  local c = counts()
  out[1], out[2] = c[1], c[2]
  return out
end

-- renew n lease_ms {report peer claim}*n -> {renewed}: pushes back the leases still held.
if op == 'renew' then
  local n, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
  local rnow = redis_now()
  local renewed = 0
  for i = 0, n - 1 do
    local b = 4 + i * 3
    local pair = ARGV[b] .. '\n' .. ARGV[b + 1]
    local e = get(pair)
    if e and e.claim == tonumber(ARGV[b + 2]) then
      redis.call('ZADD', CLAIMED, 'XX', d(rnow + lease), pair)
      renewed = renewed + 1
    end
  end
  return {renewed}
end

-- settle n {kind claim report peer sent_time next_try count_attempt error_code error_info
--   dead_at}*n, kind: a applied, r retry later, d dead letter -> {pending, dead, applied}
-- A settlement whose claim is not the entry's current one (settled already, or its lease
-- expired and another replica claimed the entry) is ignored.
if op == 'settle' then
  local n = tonumber(ARGV[2])
  local applied = 0
  for i = 0, n - 1 do
    local b = 3 + i * 10
    local pair = ARGV[b + 2] .. '\n' .. ARGV[b + 3]
    local e = get(pair)
    if e and e.claim == tonumber(ARGV[b + 1]) and e.claim ~= 0 then
      local kind = ARGV[b]
      if kind == 'a' then
        local sent = tonumber(ARGV[b + 4])
        if e.time <= sent then
          remove_entry(pair, e)
          applied = applied + 1
        else
          e.attempts = 0
          unclaim(pair, e)
        end
        drop_covered_dead(pair, sent)
      elseif kind == 'r' then
        e.next_try = tonumber(ARGV[b + 5])
        if ARGV[b + 6] == '1' then e.attempts = e.attempts + 1 end
        e.error_code = tonumber(ARGV[b + 7])
        e.error_info = ARGV[b + 8]
        unclaim(pair, e)
      elseif kind == 'd' then
        remove_entry(pair, e)
        local x = {time = e.time, caller = e.caller, first_seen = e.first_seen,
                   dead_at = tonumber(ARGV[b + 9]), attempts = e.attempts + 1,
                   error_code = tonumber(ARGV[b + 7]), error_info = ARGV[b + 8]}
        local old = get_dead(pair)
        if old then
          x.time = math.max(x.time, old.time)
          remove_dead(pair, old)
        end
        redis.call('HSET', DEAD, pair, cmsgpack.pack({x.time, x.caller, x.first_seen, x.dead_at,
          x.attempts, x.error_code, x.error_info}))
        redis.call('ZADD', ORDER, 0, order_member(x.dead_at, pair))
      end
    end
  end
  local c = counts()
  return {c[1], c[2], applied}
end

-- pair_applied report peer time -> {pending, dead, deleted 0|1}: a SetMsgRead applied the
-- pair at `time`; an unclaimed entry and a dead letter it covers go.
if op == 'pair_applied' then
  local pair = ARGV[2] .. '\n' .. ARGV[3]
  local time = tonumber(ARGV[4])
  local e = get(pair)
  local deleted = 0
  if e and e.claim == 0 and e.time <= time then
    remove_entry(pair, e)
    deleted = 1
  end
  drop_covered_dead(pair, time)
  local c = counts()
  return {c[1], c[2], deleted}
end

-- stats max_callers -> {pending, dead, oldest_first_seen (0: none), claimed, {caller n}*}
if op == 'stats' then
  local max_callers = tonumber(ARGV[2])
  local c = counts()
  local oldest = redis.call('ZRANGE', SEEN, 0, 0, 'WITHSCORES')
  local out = {c[1], c[2], oldest[2] and d(tonumber(oldest[2])) or '0',
               redis.call('ZCARD', CLAIMED)}
  if max_callers > 0 then
    local all = redis.call('HGETALL', CALLERS)
    local callers = {}
    for i = 1, #all, 2 do callers[#callers + 1] = {all[i], tonumber(all[i + 1])} end
    table.sort(callers, function(a, b)
      if a[2] ~= b[2] then return a[2] > b[2] end
      return a[1] < b[1]
    end)
    for i = 1, math.min(max_callers, #callers) do
      out[#out + 1] = callers[i][1]
      out[#out + 1] = callers[i][2]
    end
  end
  return out
end

-- list_dead after page_size -> {next, {report peer time caller first_seen dead_at attempts
--   error_code error_info}*}: after is "" or the last page's last order member; next is ""
--   after the last page.
if op == 'list_dead' then
  local after, size = ARGV[2], tonumber(ARGV[3])
  local from = after == '' and '-' or ('(' .. after)
  local members = redis.call('ZRANGEBYLEX', ORDER, from, '+', 'LIMIT', 0, size + 1)
  local out = {''}
  for i = 1, math.min(size, #members) do
    local m = members[i]
    local pair = string.sub(m, 15)
    local x = get_dead(pair)
    local nl = string.find(pair, '\n', 1, true)
    if x then
      out[#out + 1] = {string.sub(pair, 1, nl - 1), string.sub(pair, nl + 1), d(x.time), x.caller,
                       d(x.first_seen), d(x.dead_at), x.attempts, x.error_code, x.error_info}
    end
    if i == size and #members > size then out[1] = m end
  end
  return out
end

-- The dead letters a filter names: the pair's (report, peer given), or up to `batch` of all.
local function dead_matching(report, peer, batch)
  if report ~= '' then
    local pair = report .. '\n' .. peer
    if redis.call('HEXISTS', DEAD, pair) == 1 then return {pair} end
    return {}
  end
  local pairs_ = {}
  for _, m in ipairs(redis.call('ZRANGEBYLEX', ORDER, '-', '+', 'LIMIT', 0, batch)) do
    pairs_[#pairs_ + 1] = string.sub(m, 15)
  end
  return pairs_
end

-- retry_dead report peer now_ms batch -> {pending, dead, moved}: moves the dead letters back
-- to pending, due at now_ms; one meeting a pending entry merges into it (largest time; a
-- claimed entry stays claimed). For all (report ""), at most `batch` per call, oldest first.
if op == 'retry_dead' then
  local now_ms, batch = tonumber(ARGV[4]), tonumber(ARGV[5])
  local moved = 0
  for _, pair in ipairs(dead_matching(ARGV[2], ARGV[3], batch)) do
    local x = get_dead(pair)
    remove_dead(pair, x)
    local e = get(pair)
    if e then
      if x.time > e.time then
        e.time = x.time
        e.version = e.version + 1
      end
      e.attempts = 0
      e.next_try = math.min(e.next_try, now_ms)
      if e.claim == 0 then redis.call('ZADD', DUE, d(e.next_try), pair) end
      put(pair, e)
    else
      add_entry(pair, {time = x.time, first_seen = x.first_seen, next_try = now_ms,
                       attempts = 0, version = 0, caller = x.caller, claim = 0, error_code = 0,
                       error_info = ''})
    end
    moved = moved + 1
  end
  local c = counts()
  return {c[1], c[2], moved}
end

-- drop_dead report peer batch -> {pending, dead, dropped}: as retry_dead, deleting them.
if op == 'drop_dead' then
  local dropped = 0
  for _, pair in ipairs(dead_matching(ARGV[2], ARGV[3], tonumber(ARGV[4]))) do
    remove_dead(pair, get_dead(pair))
    dropped = dropped + 1
  end
  local c = counts()
  return {c[1], c[2], dropped}
end

-- counts -> {pending, dead}
if op == 'counts' then return counts() end

return redis.error_reply('imgw queue: unknown operation ' .. tostring(op))
