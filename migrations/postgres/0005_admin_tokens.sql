-- Admin tokens issued over the admin API (owner only): like API keys, the
-- table keeps a public id and HMAC-SHA-256(pepper, token), never the token
-- (sy_admin_<public id>_<secret>_<checksum>). Config tokens stay in the config.
CREATE TABLE admin_tokens (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('owner', 'admin', 'operator', 'billing', 'viewer')),
    org_id      uuid        REFERENCES orgs (id),
    public_id   text        NOT NULL UNIQUE,
    secret_hash bytea       NOT NULL CHECK (length(secret_hash) = 32),
    status      text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
