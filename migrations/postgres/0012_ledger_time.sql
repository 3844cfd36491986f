-- Invoices (issue 18) read an org's ledger by time: the balance before a month,
-- the month's entries and debits. This index serves those reads without
-- scanning every usage debit the org ever had.
CREATE INDEX ledger_org_time ON ledger (org_id, created_at);
