-- Versioned price tables and plans (issue 18).
--
-- A price version is a whole table of prices, "<provider>/<upstream model>" ->
-- {input, output, cached_input, cache_write, cache_write_1h,
-- reasoning_output, per_request, per_image} as decimal strings (USD per
-- million tokens; USD per request or image). It applies to requests received
-- from its effective time until the next version's; versions are made in
-- order of effective time, never in the past, and never changed or deleted,
-- so a usage row priced under a version keeps its price (the row records the
-- version). Version 0 is the config file's prices, used until version 1.
CREATE TABLE price_versions (
    version      integer     PRIMARY KEY CHECK (version > 0),
    effective_at timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    note         text        NOT NULL DEFAULT '',
    prices       jsonb       NOT NULL
);

CREATE FUNCTION price_versions_are_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'price versions are never changed or deleted; make a new version';
END
$$;

CREATE TRIGGER price_versions_append_only
    BEFORE UPDATE OR DELETE ON price_versions
    FOR EACH ROW EXECUTE FUNCTION price_versions_are_append_only();

-- A plan: what its orgs pay over provider cost, as a multiplier in parts per
-- billion (1,000,000,000 = at cost), by default and per upstream model.
CREATE TABLE plans (
    name              text        PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,31}$'),
    multiplier_ppb    bigint      NOT NULL CHECK (multiplier_ppb > 0),
    model_multipliers jsonb       NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- An org is on one plan (none: the config's [billing] markup_percent) and may
-- have its own multipliers, which win over its plan's.
ALTER TABLE orgs
    ADD COLUMN plan text REFERENCES plans (name),
    ADD COLUMN multiplier_ppb bigint CHECK (multiplier_ppb > 0),
    ADD COLUMN model_multipliers jsonb NOT NULL DEFAULT '{}';
