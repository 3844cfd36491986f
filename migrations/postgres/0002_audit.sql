-- The audit log: one row per admin write, in the write's own transaction,
-- append-only and hash-chained: hash = SHA-256(prev_hash || the row's content
-- as canonical JSON), so editing or deleting a row breaks the chain from there
-- (crates/control/src/audit.rs; `switchyard admin audit verify`).

CREATE TABLE audit_log (
    seq          bigint      PRIMARY KEY,
    at_ms        bigint      NOT NULL,
    actor        text        NOT NULL,
    role         text        NOT NULL,
    action       text        NOT NULL,
    target_kind  text        NOT NULL,
    target_id    text        NOT NULL,
    before       jsonb,
    after        jsonb,
    prev_hash    bytea       NOT NULL CHECK (length(prev_hash) = 32),
    hash         bytea       NOT NULL CHECK (length(hash) = 32)
);
CREATE INDEX audit_log_target ON audit_log (target_kind, target_id);
