-- Tags (issue 20): the client's tags on the request (`x-switchyard-tags`,
-- `metadata`), sorted by key, as parallel arrays (key i's value is
-- tag_values[i]): `tag_values[indexOf(tag_keys, 'feature')]` is a row's
-- `feature` tag ('' when it has none). Parallel arrays rather than a Map
-- because ClickHouse 18.16 has no Map type; runs there and on current releases.
ALTER TABLE switchyard.requests
    ADD COLUMN tag_keys Array(String),
    ADD COLUMN tag_values Array(String)
