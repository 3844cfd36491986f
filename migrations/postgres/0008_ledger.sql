-- Prepaid balances per org (issue 17): a ledger of credits, debits and
-- adjustments in integer nano-USD (credits positive, debits negative); the
-- balance is their sum, kept in org_balances in the same transaction as
-- each row (a test checks that the two agree). `ref` makes each entry
-- idempotent: a debit's is its usage event id, a credit's the caller's.
CREATE TABLE ledger (
    seq bigserial PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs (id),
    kind text NOT NULL CHECK (kind IN ('credit', 'debit', 'adjustment')),
    amount_nanos bigint NOT NULL,
    ref text NOT NULL,
    note text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, kind, ref)
);

CREATE TABLE org_balances (
    org_id uuid PRIMARY KEY REFERENCES orgs (id),
    balance_nanos bigint NOT NULL DEFAULT 0,
    credited_nanos bigint NOT NULL DEFAULT 0,
    debited_nanos bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A prepaid org's requests are admitted only against its balance.
ALTER TABLE orgs ADD COLUMN prepaid boolean NOT NULL DEFAULT false;
