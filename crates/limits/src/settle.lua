-- Settles one attempt of a request, once each: its tokens against the
-- token buckets it reserved from, and its billed cost against its budgets.
--
-- KEYS: [1] the request's settle marker, [2] the attempt's marker, [3] the
--       org's reservations (hash), [4] their expiries (sorted set), then the
--       buckets of each rate scope with a token limit (the string
--       "<request TAT>:<token TAT>" the admission writes), then each
--       budget's hash.
-- ARGV: [1] tokens reserved, [2] tokens the attempt used, [3] token buckets
--       nt, [4] request id, [5] the attempt's billed cost (nano-USD), [6] the
--       allowance the request drew from ('' when it reserved for itself),
--       [7] what it drew from it (nano-USD), then per token bucket its tpm,
--       then per budget its period (0 none, 1 UTC day, 2 UTC month).
--
-- The reservation (tokens and money) is given back once per request (the
-- first of its attempts' usage events to arrive), and each attempt's use is
-- taken once (a request that fell back has several attempts, each really
-- used). Token buckets move by (used - reserved) for the first event and by
-- used for the others: back when fewer were used (never before now), ahead
-- when more. Budgets release the request's hold and add what it cost to the
-- period it ends in. Returns 1 when it settled something, 0 when both were
-- settled before (a redelivered usage event).
local give_back = redis.call('SET', KEYS[1], '1', 'NX', 'PX', 600000) ~= false
local take = redis.call('SET', KEYS[2], '1', 'NX', 'PX', 600000) ~= false
if not give_back and not take then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local WINDOW = 60000000
local nt = tonumber(ARGV[3])


local delta = 0
if give_back then delta = delta - tonumber(ARGV[1]) end
if take then delta = delta + tonumber(ARGV[2]) end
for i = 1, nt do
  local key = KEYS[4 + i]
  local tpm = tonumber(ARGV[7 + i])
  if tpm > 0 and delta ~= 0 then
    local req, tat = '0', 0
    local v = redis.call('GET', key)
    if v then
      local a, b = string.match(v, '^([%d.]+):([%d.]+)$')
      req, tat = a or '0', tonumber(b) or 0
    end
    -- More used than reserved is owed from now on (an expired bucket was full).
    if delta > 0 then tat = math.max(tat, now) end
    local new = math.max(tat + delta * WINDOW / tpm, now)
    -- The request bucket's TAT is kept as it is; the key lives a minute
    -- and a second past the later of the two.
    redis.call('SET', key, req .. ':' .. string.format('%.0f', new), 'PX', 61000)
  end
end

local nbud = #KEYS - 4 - nt
if nbud > 0 then
  if give_back then
    if ARGV[6] ~= '' then
      release_part(KEYS[3], KEYS[4], ARGV[6], tonumber(ARGV[7]))
    else
      release(KEYS[3], KEYS[4], ARGV[4])
    end
  end
  local billed = tonumber(ARGV[5])
  if take and billed > 0 then
    local secs = tonumber(t[1])
    for j = 1, nbud do
      local key = KEYS[4 + nt + j]
      local period = tonumber(ARGV[7 + nt + j])
      local pid = period_id(period, secs)
      if redis.call('HGET', key, 'p') == pid then
        redis.call('HINCRBY', key, 'spent', billed)
      else
        redis.call('HSET', key, 'p', pid, 'spent', billed, 'held', 0)
        keep(key, period)
      end
    end
  end
end
return 1
