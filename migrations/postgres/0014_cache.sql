-- The response cache (issue 20, docs/cache.md).
-- `projects.cache`: true turns the cache on for the project's requests,
-- false off (a request's own `x-switchyard-cache` still wins); NULL follows
-- the config's `[cache] models`.
-- `plans.cache_hit_multiplier_ppb`: what a hit is billed, as parts per
-- billion of what the request would have been billed from the provider;
-- NULL: the config's `[cache] hit_multiplier` (default 0, hits are free).
ALTER TABLE projects ADD COLUMN cache boolean;
ALTER TABLE plans ADD COLUMN cache_hit_multiplier_ppb bigint
    CHECK (cache_hit_multiplier_ppb IS NULL OR cache_hit_multiplier_ppb >= 0);
