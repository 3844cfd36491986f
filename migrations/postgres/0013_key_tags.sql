-- Tags (issue 20): a key's default tags, a JSON object of string values
-- (docs/analytics.md): each request of the key carries them, under the tags
-- the request names itself.
ALTER TABLE api_keys ADD COLUMN tags jsonb NOT NULL DEFAULT '{}'::jsonb;
