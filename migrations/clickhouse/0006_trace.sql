-- Operations (issue 19): the request's OpenTelemetry trace id (32 hex digits,
-- empty when tracing was off), so an analyst goes from a row to its trace.
-- Runs on ClickHouse 18.16 and current releases.
ALTER TABLE switchyard.requests
    ADD COLUMN trace_id String DEFAULT ''
