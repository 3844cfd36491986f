-- Provider credentials, global (org_id NULL) or one org's (bring your own
-- key): sealed with AES-256-GCM under the master key of version key_version
-- (crates/control/src/sealed.rs), bound to their org and provider. The
-- fingerprint (an HMAC of the secret under the key pepper, 12 hex digits)
-- tells two credentials apart without revealing either.
CREATE TABLE provider_credentials (
    id           uuid        PRIMARY KEY,
    org_id       uuid        REFERENCES orgs (id),
    provider     text        NOT NULL,
    key_version  integer     NOT NULL,
    nonce        bytea       NOT NULL CHECK (length(nonce) = 12),
    ciphertext   bytea       NOT NULL,
    fingerprint  text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX provider_credentials_global ON provider_credentials (provider) WHERE org_id IS NULL;
CREATE UNIQUE INDEX provider_credentials_org ON provider_credentials (org_id, provider) WHERE org_id IS NOT NULL;
CREATE INDEX provider_credentials_version ON provider_credentials (key_version);
