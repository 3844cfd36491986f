-- Budget helpers shared by the admission and settlement scripts (each is
-- sent as this file followed by its own; crates/limits/src/lib.rs joins them).

-- Days since 1970-01-01 to (year, month), and back (proleptic Gregorian).
local function civil(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end
local function days_from_civil(y, m)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5)
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
-- A budget period's id at Unix second `secs`, and when it ends (Unix s).
local function period_id(period, secs)
  local day = math.floor(secs / 86400)
  if period == 1 then return 'd' .. day end
  if period == 2 then
    local y, m = civil(day)
    return 'm' .. (y * 12 + m - 1)
  end
  return 'all'
end
local function period_end(period, secs)
  local day = math.floor(secs / 86400)
  if period == 1 then return (day + 1) * 86400 end
  if period == 2 then
    local y, m = civil(day)
    if m == 12 then y, m = y + 1, 1 else m = m + 1 end
    return days_from_civil(y, m) * 86400
  end
  return 0
end
-- Gives back what reservation `rid` holds (if its budgets are still in the
-- period it was made in) and forgets it.
local function release(res_key, resx_key, rid)
  local rec = redis.call('HGET', res_key, rid)
  if rec then
    local amount = tonumber(string.match(rec, '^(%d+)'))
    for key, pid in string.gmatch(rec, ';([^=;]+)=([^;]+)') do
      if redis.call('HGET', key, 'p') == pid then
        redis.call('HINCRBY', key, 'held', -amount)
      end
    end
    redis.call('HDEL', res_key, rid)
  end
  redis.call('ZREM', resx_key, rid)
end
-- Gives back `part` of what reservation `rid` holds (an allowance's: what a
-- request drawn from it reserved, or what it never lent), at most what it
-- still holds, and forgets it once it holds nothing. A reservation already
-- swept gives back nothing: the sweeper gave back all it held.
local function release_part(res_key, resx_key, rid, part)
  local rec = redis.call('HGET', res_key, rid)
  if not rec then return end
  local amount = tonumber(string.match(rec, '^(%d+)'))
  local give = math.min(part, amount)
  if give <= 0 then return end
  for key, pid in string.gmatch(rec, ';([^=;]+)=([^;]+)') do
    if redis.call('HGET', key, 'p') == pid then
      redis.call('HINCRBY', key, 'held', -give)
    end
  end
  if give >= amount then
    redis.call('HDEL', res_key, rid)
    redis.call('ZREM', resx_key, rid)
  else
    redis.call('HSET', res_key, rid, string.format('%d', amount - give) .. string.match(rec, '^%d+(.*)$'))
  end
end
-- A period's budget outlives its period by a day (a session's is forgotten a
-- day after its last request); one without a period stays.
local function keep(key, period)
  if period == 1 then
    redis.call('PEXPIRE', key, 2 * 86400000)
  elseif period == 2 then
    redis.call('PEXPIRE', key, 33 * 86400000)
  elseif period == 3 then
    redis.call('PEXPIRE', key, 86400000)
  end
end
-- Holds `amount` against each of `budgets` (nb of them; each {key, pid,
-- fresh, period} as read: a fresh one starts its period) and records it as
-- reservation `id`, swept at `until_ms`.
local function reserve(res_key, resx_key, id, budgets, nb, amount, until_ms)
  local rec = string.format('%d', amount)
  for j = 1, nb do
    local b = budgets[j]
    if b.fresh then
      redis.call('HSET', b.key, 'p', b.pid, 'spent', 0, 'held', amount)
    else
      redis.call('HINCRBY', b.key, 'held', amount)
    end
    keep(b.key, b.period)
    rec = rec .. ';' .. b.key .. '=' .. b.pid
  end
  redis.call('HSET', res_key, id, rec)
  redis.call('ZADD', resx_key, until_ms, id)
end
-- Before a new reservation `id`: reservations past their time (a request
-- whose usage never came) give back what they held, 100 at most a call,
-- before anyone is refused for them; and what `id` itself already holds is
-- given back (one reservation per id, never two).
local function sweep(res_key, resx_key, now_ms, id)
  local expired = redis.call('ZRANGEBYSCORE', resx_key, '-inf', now_ms, 'LIMIT', 0, 100)
  for _, rid in ipairs(expired) do
    release(res_key, resx_key, rid)
  end
  if redis.call('HEXISTS', res_key, id) == 1 then
    release(res_key, resx_key, id)
  end
end
-- Reads `nb` budgets: their hashes from KEYS[k0 + j], limit and period from
-- ARGV[a0 + 2j - 1] and ARGV[a0 + 2j], at Unix second `secs`. Each is
-- {key, pid, fresh (a new period), period, spent, held, limit}.
local function read_budgets(k0, a0, nb, secs)
  local out = {}
  for j = 1, nb do
    local key = KEYS[k0 + j]
    local limit = tonumber(ARGV[a0 + (j - 1) * 2 + 1])
    local period = tonumber(ARGV[a0 + (j - 1) * 2 + 2])
    local pid = period_id(period, secs)
    local h = redis.call('HMGET', key, 'p', 'spent', 'held')
    local spent, held = 0, 0
    if h[1] == pid then
      spent = tonumber(h[2] or '0')
      held = tonumber(h[3] or '0')
    end
    out[j] = {key = key, pid = pid, fresh = h[1] ~= pid, period = period,
              spent = spent, held = held, limit = limit}
  end
  return out
end
