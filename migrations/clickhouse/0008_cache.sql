-- The response cache (issue 20): 1 on a row answered from the cache. No
-- provider was called: cost is 0, and billed is what the org's plan charges
-- for a hit (its cache-hit multiplier of what a miss would have been
-- billed; 0 by default). Tokens are the stored answer's, for analytics;
-- they do not count against tokens-per-minute limits.
ALTER TABLE switchyard.requests
    ADD COLUMN cache_hit UInt8 DEFAULT 0
