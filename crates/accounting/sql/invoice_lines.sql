-- An org's invoice lines for a period (sy_accounting::invoice_rows). Parameters:
-- org_id, start, end (Unix seconds). Aliases differ from the columns they sum
-- (ClickHouse 18.16 resolves an alias inside its own aggregate). Checked on
-- current ClickHouse by tests/sql/chdb_check.py.
SELECT project_id, provider, upstream_model, price_version,
ifNull(toString(multiplier), '') AS mult, toUInt8(batch_id != '') AS is_batch,
uniqExact(request_id) AS n_requests, count() AS n_attempts,
sum(isNull(cost)) AS n_unpriced,
sum(input_tokens) AS s_input, sum(cached_input_tokens) AS s_cached,
sum(cache_write_tokens) AS s_cache_write, sum(cache_write_1h_tokens) AS s_cache_write_1h,
sum(output_tokens) AS s_output, sum(reasoning_tokens) AS s_reasoning,
toString(sum(ifNull(cost, toDecimal64(0, 9)))) AS s_cost,
toString(sum(ifNull(billed, toDecimal64(0, 9)))) AS s_billed
FROM switchyard.requests FINAL
WHERE org_id = ? AND ts >= toDateTime(?) AND ts < toDateTime(?)
GROUP BY project_id, provider, upstream_model, price_version, mult, is_batch
ORDER BY project_id, provider, upstream_model, price_version, mult, is_batch
