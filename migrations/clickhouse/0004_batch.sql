-- Batch jobs: the batch an attempt ran for (empty for interactive calls). Its
-- `billed` already has the batch price multiplier applied.
-- Runs on ClickHouse 18.16 and current releases.
ALTER TABLE switchyard.requests
    ADD COLUMN batch_id String DEFAULT ''
