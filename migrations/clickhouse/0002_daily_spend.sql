-- Daily spend per tenant (key, org) and model, summed as rows arrive. Read with
-- sum(...) GROUP BY: SummingMergeTree collapses rows only on merge. Aggregate
-- columns are named *_sum so that no alias shadows a source column (18.16 would
-- resolve the source column to the aggregate).
CREATE TABLE IF NOT EXISTS switchyard.daily_spend
(
    day Date,
    key_id String,
    org_id String,
    provider String,
    upstream_model String,
    requests UInt64,
    input_tokens_sum UInt64,
    cached_input_tokens_sum UInt64,
    output_tokens_sum UInt64,
    cost_sum Decimal(38, 9),
    billed_sum Decimal(38, 9),
    unpriced UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, key_id, org_id, provider, upstream_model);

CREATE MATERIALIZED VIEW IF NOT EXISTS switchyard.daily_spend_mv TO switchyard.daily_spend AS
SELECT
    toDate(ts) AS day,
    key_id,
    org_id,
    provider,
    upstream_model,
    count() AS requests,
    sum(input_tokens) AS input_tokens_sum,
    sum(cached_input_tokens) AS cached_input_tokens_sum,
    sum(output_tokens) AS output_tokens_sum,
    CAST(sum(ifNull(cost, toDecimal64(0, 9))) AS Decimal(38, 9)) AS cost_sum,
    CAST(sum(ifNull(billed, toDecimal64(0, 9))) AS Decimal(38, 9)) AS billed_sum,
    sum(isNull(cost)) AS unpriced
FROM switchyard.requests
GROUP BY day, key_id, org_id, provider, upstream_model;
