-- One row per attempt: what every call through Switchyard did and cost.
-- Runs on ClickHouse 18.16 and current releases (plain MergeTree family, DateTime,
-- Decimal, Nullable; no LowCardinality, DateTime64 or TTL).
-- ReplacingMergeTree keyed by (request_id, attempt) collapses a redelivered event;
-- the accounting consumer also skips events already stored, so the daily roll-up
-- counts each attempt once. Read with FINAL for exact totals before merges.
CREATE TABLE IF NOT EXISTS switchyard.requests
(
    ts DateTime,
    event_id String,
    request_id UUID,
    attempt UInt32,
    received_ms UInt64,
    dispatched_ms UInt64,
    first_token_ms Nullable(UInt64),
    finished_ms UInt64,
    key_id String,
    org_id String,
    project_id String,
    ingress_id String,
    worker_id String,
    api String,
    model String,
    class String,
    provider String,
    upstream_model String,
    served_model String,
    stream UInt8,
    status String,
    error_code String,
    provider_status UInt16,
    finish_reason String,
    input_tokens UInt64,
    cached_input_tokens UInt64,
    cache_write_tokens UInt64,
    output_tokens UInt64,
    reasoning_tokens UInt64,
    input_tokens_source String,
    output_tokens_source String,
    cost Nullable(Decimal(18, 9)),
    billed Nullable(Decimal(18, 9)),
    queue_wait_ms UInt32,
    ttft_ms Nullable(UInt32),
    latency_ms UInt32,
    fallback_reason String,
    client_disconnected UInt8
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (toDate(ts), provider, upstream_model, key_id, request_id, attempt);
