-- Settles one attempt's tokens against a request's reservation, once each.
--
-- KEYS: [1] the request's settle marker, [2] the attempt's marker, then the
--       token bucket of each scope.
-- ARGV: [1] tokens reserved, [2] tokens the attempt used, then per scope its
--       tpm (0: none).
--
-- The reservation is given back once per request (the first of its attempts'
-- usage events to arrive), and each attempt's use is taken once (a request
-- that fell back has several attempts, each really used). So each bucket's
-- TAT moves by (used - reserved) for the first event and by used for the
-- others: back when fewer were used (never before now), ahead when more.
-- Returns 1 when it settled something, 0 when both were settled before (a
-- redelivered usage event).
local give_back = redis.call('SET', KEYS[1], '1', 'NX', 'PX', 3600000) ~= false
local take = redis.call('SET', KEYS[2], '1', 'NX', 'PX', 3600000) ~= false
if not give_back and not take then
  return 0
end
local delta = 0
if give_back then delta = delta - tonumber(ARGV[1]) end
if take then delta = delta + tonumber(ARGV[2]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local WINDOW = 60000000
for i = 3, #KEYS do
  local tpm = tonumber(ARGV[i])
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
