-- Traffic in time buckets (sy_accounting::traffic, GET /admin/v1/overview).
-- Parameters: bucket seconds (twice), org filter on (0/1), org_id, start, end
-- (Unix seconds). Attempts count each; requests once.
SELECT toUInt32(intDiv(toUInt32(ts), ?) * ?) AS t, uniqExact(request_id) AS requests,
       count() AS attempts, countIf(status != 'ok') AS failed,
       toFloat64(quantile(0.5)(latency_ms)) AS lp50, toFloat64(quantile(0.99)(latency_ms)) AS lp99,
       toFloat64(quantile(0.5)(ttft_ms)) AS tp50, toFloat64(quantile(0.99)(ttft_ms)) AS tp99,
       toFloat64(quantile(0.5)(queue_wait_ms)) AS qp50, toFloat64(quantile(0.99)(queue_wait_ms)) AS qp99,
       toString(sum(ifNull(billed, toDecimal64(0, 9)))) AS billed
FROM switchyard.requests FINAL
WHERE (? = 0 OR org_id = ?) AND ts >= toDateTime(?) AND ts < toDateTime(?)
GROUP BY t ORDER BY t
