-- Settles one request's token reservation to what it really used, once.
--
-- KEYS: [1] the request's settle marker, then the token bucket of each scope.
-- ARGV: [1] tokens reserved, [2] tokens used, then per scope its tpm (0: none).
--
-- Moves each bucket's TAT by (used - reserved) tokens: back when fewer were
-- used (never before now), ahead when more. Returns 1 when it settled, 0 when
-- the request was settled before (a redelivered usage event).
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', 3600000) == false then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local WINDOW = 60000000
local delta = tonumber(ARGV[2]) - tonumber(ARGV[1])
for i = 2, #KEYS do
  local tpm = tonumber(ARGV[1 + i])
  if tpm > 0 and delta ~= 0 then
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    -- More used than reserved is owed from now on (an expired bucket was full).
    if delta > 0 then tat = math.max(tat, now) end
    local new = math.max(tat + delta * WINDOW / tpm, now)
    if new > now then
      redis.call('SET', KEYS[i], string.format('%.0f', new), 'PX', 61000)
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
return 1
