-- Smart routing: the route a router chose (empty for a named model), its strategy
-- ("fixed" for a named model), and the serving target's position in the route's
-- target list (1 = first). One ALTER, so the migration applies whole or not at all.
-- Runs on ClickHouse 18.16 and current releases.
ALTER TABLE switchyard.requests
    ADD COLUMN route String DEFAULT '' AFTER class,
    ADD COLUMN strategy String DEFAULT '' AFTER route,
    ADD COLUMN target_rank UInt8 DEFAULT 0 AFTER strategy
