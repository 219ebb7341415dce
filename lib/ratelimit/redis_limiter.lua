-- The Redis limiter's script (redis_scripts.h states its protocol, docs/redis-budget.md the
-- model). Embedded in the build as kRedisLimiterScript, loaded with SCRIPT LOAD, run with
-- EVALSHA. Times are Redis' own (TIME), in milliseconds.
--
-- Numbers are passed to redis.call() through string.format: Lua's own conversion keeps 14
-- digits, which would round millisecond scores near 1.7e12 to 0.1 ms, sometimes downwards.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local op = ARGV[1]
local limit = tonumber(ARGV[2])
local pace = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local pending = tonumber(ARGV[5])
local min_rate = math.min(tonumber(ARGV[6]), pace)
local increase = tonumber(ARGV[7])
local hold = tonumber(ARGV[8])
local cooldown = tonumber(ARGV[9])
local decrease = tonumber(ARGV[10])
local pace_ttl = 120000

local function fmt(x) return string.format('%.3f', x) end

-- A span's age in the `spans` operation (kSpan* in redis_scripts.h): ms since it ended, or one
-- of these. Any other negative age is taken as in flight.
local AGE_IN_FLIGHT = -1     -- Scored now + pending: the latest it can end.
local AGE_UNUSED_PERMIT = -2 -- Removed, and its pace given back.
local AGE_REMOVED = 1000     -- This or more: removed (it has left the sliding second).

-- The shared rate now: the pace, or the last cut climbing back linearly after `hold`.
local function rate_at()
  local s = redis.call('HMGET', KEYS[2], 'cut_rate', 'cut_at')
  local cut_rate, cut_at = tonumber(s[1]), tonumber(s[2])
  if not cut_rate or not cut_at then return pace, nil end
  local since = now - cut_at - hold
  if since <= 0 then return math.min(pace, cut_rate), cut_at end
  return math.min(pace, cut_rate + increase * since / 1000), cut_at
end

-- Drops the spans that ended more than a second ago; returns how many are left.
local function trim()
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. fmt(now - 1000))
  return redis.call('ZCARD', KEYS[1])
end

local function touch_spans()
  redis.call('PEXPIRE', KEYS[1], math.ceil(pending + 2000))
end

if op == 'acquire' then
  local id = ARGV[11]
  local rate = rate_at()
  local rate_milli = math.floor(rate * 1000)
  local count = trim()
  local T = 1000 / rate
  local tat = tonumber(redis.call('HGET', KEYS[2], 'tat')) or now
  if tat < now then tat = now end
  local wait = tat - (burst - 1) * T - now
  if wait > 0 then return {0, math.ceil(wait * 1000), rate_milli, count} end
  local limit_eff = math.max(1, math.floor(limit * rate / pace + 1e-9))
  if count >= limit_eff then
    -- Room comes when the (count - limit_eff + 1)th oldest end leaves the window; when that
    -- span is still in flight only its end can make room: look again soon.
    local k = count - limit_eff
    local r = redis.call('ZRANGE', KEYS[1], k, k, 'WITHSCORES')
    local w = 2
    local s = tonumber(r[2])
    if s and s <= now then w = s + 1000 - now + 0.001 end
    return {0, math.ceil(w * 1000), rate_milli, count}
  end
  redis.call('ZADD', KEYS[1], fmt(now + pending), id)
  touch_spans()
  redis.call('HSET', KEYS[2], 'tat', fmt(tat + T))
  redis.call('PEXPIRE', KEYS[2], pace_ttl)
  return {1, 0, rate_milli, count + 1}
elseif op == 'spans' then
  local T = 1000 / rate_at()
  for i = 11, #ARGV - 1, 2 do
    local id, age = ARGV[i], tonumber(ARGV[i + 1])
    if age == AGE_UNUSED_PERMIT then
      -- A permit never used: its pace goes back too, as a token to a bucket (tat >= now keeps
      -- the burst within b).
      if redis.call('ZREM', KEYS[1], id) == 1 then
        local tat = tonumber(redis.call('HGET', KEYS[2], 'tat'))
        if tat then redis.call('HSET', KEYS[2], 'tat', fmt(math.max(now, tat - T))) end
      end
    elseif age < 0 then  -- AGE_IN_FLIGHT
      redis.call('ZADD', KEYS[1], fmt(now + pending), id)
    elseif age < AGE_REMOVED then
      redis.call('ZADD', KEYS[1], fmt(now - age), id)
    else
      redis.call('ZREM', KEYS[1], id)
    end
  end
  if redis.call('EXISTS', KEYS[1]) == 1 then touch_spans() end
  return trim()
elseif op == 'throttled' then
  local rate, cut_at = rate_at()
  if cut_at and now - cut_at < cooldown then return {0, math.floor(rate * 1000)} end
  local cut = math.max(min_rate, rate * decrease)
  redis.call('HSET', KEYS[2], 'cut_rate', fmt(cut), 'cut_at', fmt(now))
  redis.call('PEXPIRE', KEYS[2], pace_ttl)
  return {1, math.floor(cut * 1000)}
elseif op == 'heartbeat' then
  local ttl = tonumber(ARGV[12])
  redis.call('ZADD', KEYS[3], fmt(now), ARGV[11])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. fmt(now - ttl))
  redis.call('PEXPIRE', KEYS[3], math.ceil(ttl * 3))
  local rate = rate_at()
  local since = tonumber(ARGV[13])
  local fresh = redis.call('ZCARD', KEYS[3])
  if since >= 0 then fresh = redis.call('ZCOUNT', KEYS[3], fmt(now - since), '+inf') end
  return {redis.call('ZCARD', KEYS[3]), math.floor(rate * 1000), trim(), fresh}
elseif op == 'leave' then
  return redis.call('ZREM', KEYS[3], ARGV[11])
end
return redis.error_reply('imgw limiter script: unknown operation ' .. tostring(op))
