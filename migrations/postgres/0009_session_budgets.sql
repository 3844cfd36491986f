-- Session caps (issue 17): a project's `session_budget` ({"usd": "1.00"}, or
-- NULL) caps what the requests naming one `x-switchyard-session` may spend
-- together (an agent that loops stops there).
ALTER TABLE projects ADD COLUMN session_budget jsonb;
