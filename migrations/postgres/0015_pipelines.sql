-- Pipelines declared through the admin API (issue 20, docs/pipelines.md),
-- beside the config file's `[pipelines.<name>]` (a name the file declares
-- wins). `definition` is what the config holds under the name:
-- {"description": "...", "steps": [{"name", "model", "prompt", "system"?,
-- "max_tokens"?, "temperature"?}, ...]}, checked by the admin API.
CREATE TABLE pipelines (
    name text PRIMARY KEY,
    definition jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
