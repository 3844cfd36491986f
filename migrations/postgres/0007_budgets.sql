-- Budgets per org, project and key (issue 17): `budget` is
-- {"usd": "12.50", "period": "day"|"month"|"none"}, or NULL for none.
-- `lower_max_tokens`: a request its budgets cannot pay for in full gets a
-- lower max_tokens (what they can pay for) instead of a 402.
ALTER TABLE orgs ADD COLUMN budget jsonb;
ALTER TABLE projects ADD COLUMN budget jsonb;
ALTER TABLE api_keys ADD COLUMN budget jsonb;
ALTER TABLE projects ADD COLUMN lower_max_tokens boolean NOT NULL DEFAULT true;
