-- Operator console sessions (issue 22, docs/console.md). A browser holds
-- only a random secret in an HttpOnly cookie; this row holds its SHA-256,
-- the CSRF token its writes must send, and which admin token signed in:
-- a config token by the hex SHA-256 of the token, a database token by its
-- public id. The token is looked up again on every call, so revoking it
-- (or disabling its org) ends its sessions at once.
CREATE TABLE console_sessions (
    id_hash bytea PRIMARY KEY,
    csrf text NOT NULL,
    token_kind text NOT NULL CHECK (token_kind IN ('config', 'database')),
    token_ref text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    ended_at timestamptz
);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);
