-- Top-ups through payment providers (issue 18). An order is made for one
-- provider, one amount and one currency (minor units, as the provider
-- counts them) and credits `credit_nanos` to its org's ledger once, when its
-- payment is confirmed. Every provider event is stored once under
-- (provider, event_id), in the same transaction as what it does to the
-- ledger, with what came of it: a replay finds its row and does nothing, a
-- failure leaves neither.
CREATE TABLE payment_orders (
    id text PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES orgs (id),
    provider text NOT NULL CHECK (provider IN ('stripe', 'yookassa')),
    amount bigint NOT NULL CHECK (amount > 0),
    currency text NOT NULL,
    credit_nanos bigint NOT NULL CHECK (credit_nanos > 0),
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'paid')),
    reversed bigint NOT NULL DEFAULT 0,
    payment_ref text,
    created_at timestamptz NOT NULL DEFAULT now(),
    paid_at timestamptz
);
CREATE INDEX payment_orders_by_payment ON payment_orders (provider, payment_ref);

CREATE TABLE payment_events (
    provider text NOT NULL,
    event_id text NOT NULL,
    kind text NOT NULL,
    order_id text,
    outcome text NOT NULL CHECK (outcome IN ('credited', 'debited', 'nothing', 'rejected')),
    reason text NOT NULL DEFAULT '',
    amount bigint,
    currency text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_id)
);
