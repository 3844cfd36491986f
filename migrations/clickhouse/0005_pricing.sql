-- Billing (issue 18): the 1-hour part of the cache writes (priced apart), the
-- price-table version the call was priced under (0: the config file's prices),
-- the org's plan and the multiplier billed over cost (`billed` = `cost` ×
-- `multiplier`, before a batch's price multiplier; NULL in rows written before
-- this column). One ALTER, so the migration applies whole or not at all.
-- Runs on ClickHouse 18.16 and current releases.
ALTER TABLE switchyard.requests
    ADD COLUMN cache_write_1h_tokens UInt64 DEFAULT 0 AFTER cache_write_tokens,
    ADD COLUMN price_version UInt32 DEFAULT 0,
    ADD COLUMN plan String DEFAULT '',
    ADD COLUMN multiplier Nullable(Decimal(18, 9))
