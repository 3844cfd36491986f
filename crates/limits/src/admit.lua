-- Admits one request against every scope that applies to it, all or nothing,
-- on the Redis server's clock (crates/limits/src/lib.rs documents the model).
--
-- KEYS: per scope, three keys: its request bucket, its token bucket and its
--       concurrency lease set.
-- ARGV: [1] request id, [2] tokens to reserve, [3] lease ms, then per scope:
--       rpm, tpm, concurrency (0: no such limit).
--
-- Request and token limits are GCRA over a one-minute window: each bucket
-- keeps its theoretical arrival time (TAT, microseconds); a cost c moves it
-- c * (60 s / limit) ahead, and is allowed while TAT - now stays within the
-- minute. Concurrency is a sorted set of leases (request id, expiry ms).
--
-- Returns {1, per scope: rem_req, reset_req_ms, rem_tok, reset_tok_ms} when
-- admitted, or {0, scope (1-based), kind (1 rpm, 2 tpm, 3 concurrency),
-- retry_after_ms} when refused (and then nothing was taken from any scope).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local WINDOW = 60000000
local id = ARGV[1]
local tokens = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])
local n = #KEYS / 3

local plan = {}
for i = 1, n do
  local rpm = tonumber(ARGV[3 + (i - 1) * 3 + 1])
  local tpm = tonumber(ARGV[3 + (i - 1) * 3 + 2])
  local conc = tonumber(ARGV[3 + (i - 1) * 3 + 3])
  local p = {}
  if rpm > 0 then
    local step = WINDOW / rpm
    local tat = tonumber(redis.call('GET', KEYS[(i - 1) * 3 + 1]) or '0')
    local new = math.max(tat, now) + step
    if new - now > WINDOW then
      return {0, i, 1, math.ceil((new - now - WINDOW) / 1000)}
    end
    p.req = new
    p.req_step = step
  end
  if tpm > 0 and tokens > 0 then
    local step = WINDOW / tpm
    local tat = tonumber(redis.call('GET', KEYS[(i - 1) * 3 + 2]) or '0')
    local new = math.max(tat, now) + step * tokens
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
    local key = KEYS[(i - 1) * 3 + 3]
    -- Expired leases (of processes that died) are dropped only when they
    -- could make a difference: at the limit.
    local n = redis.call('ZCARD', key)
    if n >= conc then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
      n = redis.call('ZCARD', key)
    end
    if n >= conc then
      local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      local wait = 1000
      if first[2] then wait = math.max(1, tonumber(first[2]) - now_ms) end
      return {0, i, 3, wait}
    end
    p.conc = key
  end
  plan[i] = p
end

local out = {1}
for i = 1, n do
  local p = plan[i]
  local ttl = 61000
  if p.req then
    redis.call('SET', KEYS[(i - 1) * 3 + 1], string.format('%.0f', p.req), 'PX', ttl)
    table.insert(out, math.floor((WINDOW - (p.req - now)) / p.req_step))
    table.insert(out, math.ceil((p.req - now) / 1000))
  else
    table.insert(out, -1)
    table.insert(out, 0)
  end
  if p.tok then
    redis.call('SET', KEYS[(i - 1) * 3 + 2], string.format('%.0f', p.tok), 'PX', ttl)
    table.insert(out, math.floor((WINDOW - (p.tok - now)) / p.tok_step))
    table.insert(out, math.ceil((p.tok - now) / 1000))
  else
    table.insert(out, -1)
    table.insert(out, 0)
  end
  if p.conc then
    redis.call('ZADD', p.conc, now_ms + lease_ms, id)
    redis.call('PEXPIRE', p.conc, lease_ms + 1000)
  end
end
return out
