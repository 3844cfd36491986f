-- Traffic by target (sy_accounting::traffic_by_target, GET /admin/v1/overview).
-- Parameters: org filter on (0/1), org_id, start, end (Unix seconds).
SELECT provider, upstream_model, count() AS attempts, countIf(status != 'ok') AS failed,
       toFloat64(quantile(0.5)(latency_ms)) AS lp50, toFloat64(quantile(0.99)(latency_ms)) AS lp99,
       toString(sum(ifNull(billed, toDecimal64(0, 9)))) AS billed
FROM switchyard.requests FINAL
WHERE (? = 0 OR org_id = ?) AND ts >= toDateTime(?) AND ts < toDateTime(?)
GROUP BY provider, upstream_model ORDER BY attempts DESC, provider, upstream_model
