-- Hands one process an allowance for one set of scopes (a key and a model):
-- a number of requests and tokens taken from every rate scope's buckets, and
-- money held against every budget, all at once, all or nothing; grows the
-- process's pool of concurrency slots; and gives back what an earlier
-- allowance of the set did not use. crates/limits/src/allowance.rs
-- documents the model; admit.lua's buckets, leases and budgets are the same.
--
-- KEYS: per rate scope its buckets and its lease set (as admit.lua); then,
--       when budgets apply, the org's reservations, their expiries, its
--       "reconciled" marker, then one hash per budget.
-- ARGV: [1] the new allowance's id (its money reservation; its slots are
--       "<id>:<i>"), [2] the share divisor (no allowance may take more than
--       1/divisor of what a scope has left), [3] rate scopes n, then per rate
--       scope rpm, tpm, concurrency; then requests asked (0: give back only),
--       fewest worth having, tokens asked, fewest worth having, requests
--       and tokens given back, slots asked, lease ms, budgets nb; then when
--       nb > 0: money asked (nano-USD), fewest worth having, reservation ms,
--       1 to require the org's "reconciled" marker, reservations given back
--       nr, then nr pairs (reservation id, nano-USD), then per budget its
--       limit and period.
--
-- Returns {granted (1/0), requests (-1: no request limit), tokens (-1: no
-- token limit), money (-1: no budget), slots added, then per rate scope
-- rem_req, reset_req_ms, rem_tok, reset_tok_ms after the grant, then the
-- tightest budget's left after it and its limit, then ms until the first of
-- the budgets' periods ends (-1: none ends)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local WINDOW = 60000000

local id = ARGV[1]
local D = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local a = 3 + n * 3
local k_ask, k_min = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
local t_ask, t_min = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
local back_req, back_tok = tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
local slots = tonumber(ARGV[a + 7])
local lease_ms = tonumber(ARGV[a + 8])
local nb = tonumber(ARGV[a + 9])

local grant = k_ask > 0
local k, tk = k_ask, t_ask
local has_req, has_tok = false, false
local st = {}
for i = 1, n do
  local rpm = tonumber(ARGV[3 + (i - 1) * 3 + 1])
  local tpm = tonumber(ARGV[3 + (i - 1) * 3 + 2])
  local conc = tonumber(ARGV[3 + (i - 1) * 3 + 3])
  local s = {rpm = rpm, tpm = tpm, conc = conc}
  if rpm > 0 or tpm > 0 then
    local req, tok = 0, 0
    local v = redis.call('GET', KEYS[(i - 1) * 2 + 1])
    if v then
      local x, y = string.match(v, '^([%d.]+):([%d.]+)$')
      req, tok = tonumber(x) or 0, tonumber(y) or 0
    end
    -- What an earlier allowance did not use goes back (never before now).
    if rpm > 0 and back_req > 0 then
      req = math.max(req - back_req * WINDOW / rpm, now)
      s.dirty = true
    end
    if tpm > 0 and back_tok > 0 then
      tok = math.max(tok - back_tok * WINDOW / tpm, now)
      s.dirty = true
    end
    s.req, s.tok = req, tok
    if rpm > 0 then
      has_req = true
      local left = math.floor((WINDOW - (math.max(req, now) - now)) * rpm / WINDOW)
      k = math.min(k, math.floor(left / D))
    end
    if tpm > 0 then
      has_tok = true
      local left = math.floor((WINDOW - (math.max(tok, now) - now)) * tpm / WINDOW)
      tk = math.min(tk, math.floor(left / D))
    end
  end
  if conc > 0 and slots > 0 then
    local key = KEYS[(i - 1) * 2 + 2]
    local leased = redis.call('ZCARD', key)
    if leased + slots * D > conc then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
      leased = redis.call('ZCARD', key)
    end
    if leased + slots * D > conc then
      slots = 0
    end
  end
  st[i] = s
end
if has_req and k < k_min then grant = false end
if has_tok and tk < t_min then grant = false end

local m = -1
local room, limit_of_tightest = 0, 0
local period_ends = -1
local budgets = {}
if nb > 0 then
  local b = a + 9
  local m_ask, m_min = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local res_ms = tonumber(ARGV[b + 3])
  local need_ready = ARGV[b + 4] == '1'
  local nr = tonumber(ARGV[b + 5])
  local res_key, resx_key = KEYS[n * 2 + 1], KEYS[n * 2 + 2]
  for r = 1, nr do
    release_part(res_key, resx_key, ARGV[b + 5 + (r - 1) * 2 + 1], tonumber(ARGV[b + 5 + (r - 1) * 2 + 2]))
  end
  -- An id already there (another run of a process with the same name)
  -- gives back what it holds rather than be overwritten.
  sweep(res_key, resx_key, now_ms, id)
  if need_ready and redis.call('EXISTS', KEYS[n * 2 + 3]) == 0 then
    grant = false
  end
  local l0 = b + 5 + nr * 2
  local secs = tonumber(t[1])
  room = nil
  budgets = read_budgets(n * 2 + 3, l0, nb, secs)
  for j = 1, nb do
    local bj = budgets[j]
    local spent, held, limit = bj.spent, bj.held, bj.limit
    local ends = period_end(bj.period, secs)
    if ends > 0 and (period_ends == -1 or ends * 1000 - now_ms < period_ends) then
      period_ends = ends * 1000 - now_ms
    end
    local left = limit - spent - held
    if room == nil or left < room then
      room, limit_of_tightest = left, limit
    end
  end
  m = math.min(m_ask, math.floor(math.max(room, 0) / D))
  if m < m_min then grant = false end
  if grant then
    reserve(res_key, resx_key, id, budgets, nb, m, now_ms + res_ms)
    room = room - m
  end
end

local out = {grant and 1 or 0, -1, -1, -1, slots}
if grant then
  if has_req then out[2] = k end
  if has_tok then out[3] = tk end
  if nb > 0 then out[4] = m end
end
for i = 1, n do
  local s = st[i]
  local req_step, tok_step
  if s.rpm > 0 then
    req_step = WINDOW / s.rpm
    if grant then s.req = math.max(s.req, now) + k * req_step; s.dirty = true end
  end
  if s.tpm > 0 then
    tok_step = WINDOW / s.tpm
    if grant and tk > 0 then s.tok = math.max(s.tok, now) + tk * tok_step; s.dirty = true end
  end
  if s.dirty then
    redis.call('SET', KEYS[(i - 1) * 2 + 1], string.format('%.0f:%.0f', s.req, s.tok), 'PX', 61000)
  end
  for _, bk in ipairs({{s.req, req_step}, {s.tok, tok_step}}) do
    local tat, step = bk[1], bk[2]
    if step then
      table.insert(out, math.floor((WINDOW - (math.max(tat, now) - now)) / step))
      table.insert(out, math.ceil((math.max(tat, now) - now) / 1000))
    else
      table.insert(out, -1)
      table.insert(out, 0)
    end
  end
  if s.conc > 0 and slots > 0 then
    local key = KEYS[(i - 1) * 2 + 2]
    local args = {}
    for j = 1, slots do
      table.insert(args, now_ms + lease_ms)
      table.insert(args, id .. ':' .. j)
    end
    redis.call('ZADD', key, unpack(args))
    redis.call('PEXPIRE', key, lease_ms + 1000)
  end
end
table.insert(out, room)
table.insert(out, limit_of_tightest)
table.insert(out, period_ends)
return out
