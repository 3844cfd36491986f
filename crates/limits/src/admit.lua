-- Admits one request against every scope that applies to it, all or nothing,
-- on the Redis server's clock (crates/limits/src/lib.rs documents the model).
--
-- KEYS: per rate scope, two keys: its buckets (one string: the request
--       bucket's TAT, ':', the token bucket's; one GET and one SET for both)
--       and its concurrency lease set; then, when budgets apply, the org's
--       reservations (hash), their expiries (sorted set) and its
--       "reconciled" marker, then one hash per
--       budget (fields p: period id, spent, held; nano-USD).
-- ARGV: [1] request id, [2] tokens to reserve, [3] lease ms, [4] rate scopes
--       n, then per rate scope: rpm, tpm, concurrency (0: no such limit); then
--       budgets: count nb, input cost (nano-USD), cost per output token
--       (nano-USD), output tokens asked, fewest output tokens worth lowering
--       to (0: never lower), reservation ms, 1 to require the org's
--       "reconciled" marker, then per budget: its limit
--       (nano-USD) and period (0 none, 1 UTC day, 2 UTC month, 3 a session:
--       none, forgotten a day after its last request).
--
-- Request and token limits are GCRA over a one-minute window: each bucket
-- keeps its theoretical arrival time (TAT, microseconds); a cost c moves it
-- c * (60 s / limit) ahead, and is allowed while TAT - now stays within the
-- minute (a bucket without a limit keeps 0). Concurrency is a sorted set of
-- leases (request id, expiry ms).
-- A budget holds what was spent in its period and what requests in flight
-- reserved; a request reserves its largest cost against every budget, or, if
-- one cannot pay and lowering is allowed, as many output tokens as all can.
--
-- Returns {1, per rate scope: rem_req, reset_req_ms, rem_tok, reset_tok_ms,
-- then output tokens granted (-1: no budget), budget left after it, that
-- budget's limit} when admitted, or {0, scope (1-based), kind (1 rpm, 2 tpm,
-- 3 concurrency), retry_after_ms} when a rate limit refused, or {0, budget
-- (1-based), 4, spent, held, limit, period end (Unix s, 0: none)} when a
-- budget refused, or {0, 0, 5} when the org's budgets are not restored yet
-- (and then nothing was taken from any scope).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local WINDOW = 60000000

local id = ARGV[1]
local tokens = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])
local n = tonumber(ARGV[4])

local plan = {}
for i = 1, n do
  local rpm = tonumber(ARGV[4 + (i - 1) * 3 + 1])
  local tpm = tonumber(ARGV[4 + (i - 1) * 3 + 2])
  local conc = tonumber(ARGV[4 + (i - 1) * 3 + 3])
  local p = {}
  local tat_req, tat_tok = 0, 0
  if rpm > 0 or tpm > 0 then
    local v = redis.call('GET', KEYS[(i - 1) * 2 + 1])
    if v then
      local a, b = string.match(v, '^([%d.]+):([%d.]+)$')
      tat_req, tat_tok = tonumber(a) or 0, tonumber(b) or 0
    end
    p.buckets = KEYS[(i - 1) * 2 + 1]
    p.req, p.tok = tat_req, tat_tok
  end
  if rpm > 0 then
    local step = WINDOW / rpm
    local new = math.max(tat_req, now) + step
    if new - now > WINDOW then
      return {0, i, 1, math.ceil((new - now - WINDOW) / 1000)}
    end
    p.req = new
    p.req_step = step
  end
  if tpm > 0 and tokens > 0 then
    local step = WINDOW / tpm
    local new = math.max(tat_tok, now) + step * tokens
    if new - now > WINDOW then
      if tokens > tpm then
        -- More than a minute's tokens: it never fits.
        return {0, i, 2, -1}
      end
      return {0, i, 2, math.ceil((new - now - WINDOW) / 1000)}
    end
    p.tok = new
    p.tok_step = step
  end
  if conc > 0 then
    local key = KEYS[(i - 1) * 2 + 2]
    -- Expired leases (of processes that died) are dropped only when they
    -- could make a difference: at the limit.
    local leased = redis.call('ZCARD', key)
    if leased >= conc then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
      leased = redis.call('ZCARD', key)
    end
    if leased >= conc then
      local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      local wait = 1000
      if first[2] then wait = math.max(1, tonumber(first[2]) - now_ms) end
      return {0, i, 3, wait}
    end
    p.conc = key
  end
  plan[i] = p
end

-- Budgets: checked after every rate limit, before anything is taken.
local b0 = 4 + n * 3 + 1
local nb = tonumber(ARGV[b0] or '0')
local budgets = {}
local out_tokens = -1
local cost = 0
local room, tight = nil, 0
local res_key, resx_key
if nb > 0 then
  local in_cost = tonumber(ARGV[b0 + 1])
  local per_tok = tonumber(ARGV[b0 + 2])
  out_tokens = tonumber(ARGV[b0 + 3])
  local min_out = tonumber(ARGV[b0 + 4])
  res_key = KEYS[n * 2 + 1]
  resx_key = KEYS[n * 2 + 2]
  -- Until the usage records have restored the org's budgets into this Redis
  -- (a reconciliation round marks it), nothing can be reserved against them.
  if ARGV[b0 + 6] == '1' and redis.call('EXISTS', KEYS[n * 2 + 3]) == 0 then
    return {0, 0, 5}
  end
  -- Lapsed reservations go back first; a request admitted again under the
  -- same id (a batch item sent again after its dispatcher restarted) holds
  -- one reservation, not two.
  sweep(res_key, resx_key, now_ms, id)
  local secs = tonumber(t[1])
  budgets = read_budgets(n * 2 + 3, b0 + 6, nb, secs)
  for j = 1, nb do
    local bj = budgets[j]
    local left = bj.limit - bj.spent - bj.held
    if room == nil or left < room then
      room, tight = left, j
      budgets.spent, budgets.held, budgets.limit = bj.spent, bj.held, bj.limit
    end
  end
  cost = in_cost + math.ceil(per_tok * out_tokens)
  if cost > room and min_out > 0 and per_tok > 0 then
    local afford = math.floor((room - in_cost) / per_tok)
    if afford >= min_out and afford < out_tokens then
      out_tokens = afford
      cost = in_cost + math.ceil(per_tok * out_tokens)
    end
  end
  if cost > room then
    local p = budgets[tight].period
    return {0, tight, 4, budgets.spent, budgets.held, budgets.limit, period_end(p, secs)}
  end
end

local out = {1}
for i = 1, n do
  local p = plan[i]
  -- Both buckets' new TATs (a minute and a second at most ahead of now).
  if p.buckets then
    redis.call('SET', p.buckets, string.format('%.0f:%.0f', p.req, p.tok), 'PX', 61000)
  end
  -- Each bucket: what is left and when it is full again.
  for _, b in ipairs({{p.req, p.req_step}, {p.tok, p.tok_step}}) do
    local tat, step = b[1], b[2]
    if step then
      table.insert(out, math.floor((WINDOW - (tat - now)) / step))
      table.insert(out, math.ceil((tat - now) / 1000))
    else
      table.insert(out, -1)
      table.insert(out, 0)
    end
  end
  if p.conc then
    redis.call('ZADD', p.conc, now_ms + lease_ms, id)
    redis.call('PEXPIRE', p.conc, lease_ms + 1000)
  end
end
if nb > 0 then
  local res_ms = tonumber(ARGV[b0 + 5])
  reserve(res_key, resx_key, id, budgets, nb, cost, now_ms + res_ms)
  table.insert(out, out_tokens)
  table.insert(out, room - cost)
  table.insert(out, budgets.limit)
else
  table.insert(out, -1)
  table.insert(out, 0)
  table.insert(out, 0)
end
return out
