-- Gatehouse rate-limit check: token bucket + daily/monthly quotas for one key, atomically,
-- on the Redis server's clock. KEYS[1]: the key's hash.
-- ARGV: rps, burst, daily (0: none), monthly (0: none), want, give_back, give_back_day,
--       give_back_month
-- Returns {granted, tokens (string), day_count, month_count, limited (0 none, 1 burst,
--          2 daily, 3 monthly), secs_to_day_end, secs_to_month_end, day, month}
local function floor(x) return math.floor(x) end

-- Days since 1970-01-01 for a civil date (H. Hinnant's algorithm).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (m > 2) and (m - 3) or (m + 9)
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- (day number, month number = year*12 + month-1, secs to next day, secs to next month)
local function calendar(secs)
  local day = floor(secs / 86400)
  local z = day + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local m = (mp < 10) and (mp + 3) or (mp - 9)
  if m <= 2 then y = y + 1 end
  local ny, nm = y, m + 1
  if nm == 13 then ny = y + 1; nm = 1 end
  local next_month = days_from_civil(ny, nm, 1) * 86400
  return day, y * 12 + (m - 1), 86400 - secs % 86400, next_month - secs
end
--CALENDAR-END

local t = redis.call('TIME')
local secs = tonumber(t[1])
local now = secs * 1000 + floor(tonumber(t[2]) / 1000)
local rps, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local dl, ml = tonumber(ARGV[3]), tonumber(ARGV[4])
local want, back = tonumber(ARGV[5]), tonumber(ARGV[6])

local h = redis.call('HMGET', KEYS[1], 'tk', 'ts', 'd', 'dc', 'm', 'mc')
local tokens, ts = tonumber(h[1]), tonumber(h[2])
if tokens == nil or ts == nil then tokens = burst; ts = now end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rps / 1000)
  ts = now
end
tokens = math.min(tokens, burst)

local day, month, to_day_end, to_month_end = calendar(secs)
local dc, mc = 0, 0
if tonumber(h[3]) == day then dc = tonumber(h[4]) or 0 end
if tonumber(h[5]) == month then mc = tonumber(h[6]) or 0 end

if back > 0 then
  tokens = math.min(burst, tokens + back)
  if tonumber(ARGV[7]) == day then dc = math.max(0, dc - back) end
  if tonumber(ARGV[8]) == month then mc = math.max(0, mc - back) end
end

local grant, limited = want, 0
local whole = math.max(0, floor(tokens))
if whole < grant then grant = whole; limited = 1 end
if dl > 0 then
  local left = math.max(0, dl - dc)
  if left < grant or (left == 0 and want > 0) then grant = math.min(grant, left); limited = 2 end
end
if ml > 0 then
  local left = math.max(0, ml - mc)
  if left < grant or (left == 0 and want > 0) then grant = math.min(grant, left); limited = 3 end
end

tokens = tokens - grant
dc = dc + grant
mc = mc + grant
redis.call('HSET', KEYS[1], 'tk', tostring(tokens), 'ts', ts, 'd', day, 'dc', dc, 'm', month, 'mc', mc)
local ttl = math.ceil((burst - tokens) / rps * 1000) + 1000
if dl > 0 and dc > 0 then ttl = math.max(ttl, to_day_end * 1000 + 1000) end
if ml > 0 and mc > 0 then ttl = math.max(ttl, to_month_end * 1000 + 1000) end
redis.call('PEXPIRE', KEYS[1], ttl)
return {grant, tostring(tokens), dc, mc, limited, to_day_end, to_month_end, day, month}
