-- Tenants: orgs own projects, projects own API keys. A key row keeps its public
-- id and HMAC-SHA-256(pepper, key), never the key (crates/control/src/key.rs);
-- a rotation keeps the row and the id, and the old hash stays valid until
-- previous_valid_until.

CREATE TABLE orgs (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL,
    status      text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projects (
    id          uuid        PRIMARY KEY,
    org_id      uuid        NOT NULL REFERENCES orgs (id),
    name        text        NOT NULL,
    status      text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX projects_org ON projects (org_id);

CREATE TABLE api_keys (
    id                    uuid        PRIMARY KEY,
    project_id            uuid        NOT NULL REFERENCES projects (id),
    name                  text        NOT NULL,
    env                   text        NOT NULL,
    public_id             text        NOT NULL UNIQUE,
    secret_hash           bytea       NOT NULL CHECK (length(secret_hash) = 32),
    previous_hash         bytea       CHECK (length(previous_hash) = 32),
    previous_valid_until  timestamptz,
    scopes                jsonb       NOT NULL DEFAULT '{}',
    allowed_cidrs         text[]      NOT NULL DEFAULT '{}',
    metadata              jsonb       NOT NULL DEFAULT '{}',
    expires_at            timestamptz,
    status                text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_project ON api_keys (project_id);
