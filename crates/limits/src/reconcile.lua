-- Sets a budget's spend in its current period to the truth (the usage rows
-- in ClickHouse), keeping what requests in flight hold.
--
-- KEYS: [1] the budget's hash (fields p: period id, spent, held).
-- ARGV: [1] period (0 none, 1 UTC day, 2 UTC month), [2] the period id the
--       truth is for, [3] the truth: what the period's rows were billed
--       (nano-USD), [4] 1 to only ever raise the spend (a truth that may lag
--       behind Redis, like a ledger written after settlement).
--
-- Returns the drift (truth - what Redis held as spent; 0: none). A period id
-- other than the one in Redis (a new period, or a Redis that lost the
-- budget) starts the period from the truth with nothing held. The caller
-- computes the period id the same way the admission script does.
local truth = tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'p', 'spent')
local period = tonumber(ARGV[1])
if h[1] ~= ARGV[2] then
  redis.call('HSET', KEYS[1], 'p', ARGV[2], 'spent', truth, 'held', 0)
  if period == 1 then
    redis.call('PEXPIRE', KEYS[1], 2 * 86400000)
  elseif period == 2 then
    redis.call('PEXPIRE', KEYS[1], 33 * 86400000)
  end
  return truth - 0
end
local spent = tonumber(h[2] or '0')
if ARGV[4] == '1' and truth < spent then
  return 0
end
if spent ~= truth then
  redis.call('HSET', KEYS[1], 'spent', truth)
end
return truth - spent
