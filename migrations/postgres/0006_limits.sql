-- Rate limits per org, project and key (issue 17): `limits` is
-- {"rpm", "tpm", "concurrency"} (each optional), `model_limits` is
-- {"<model>": {...}} for limits that hold per model within the scope.
ALTER TABLE orgs ADD COLUMN limits jsonb NOT NULL DEFAULT '{}';
ALTER TABLE orgs ADD COLUMN model_limits jsonb NOT NULL DEFAULT '{}';
ALTER TABLE projects ADD COLUMN limits jsonb NOT NULL DEFAULT '{}';
ALTER TABLE projects ADD COLUMN model_limits jsonb NOT NULL DEFAULT '{}';
ALTER TABLE api_keys ADD COLUMN limits jsonb NOT NULL DEFAULT '{}';
ALTER TABLE api_keys ADD COLUMN model_limits jsonb NOT NULL DEFAULT '{}';
