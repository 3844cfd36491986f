-- Invoices (issue 18) read an org's ledger from a month's start on (its balance
-- then is the stored balance less what came after). This index serves those
-- reads without scanning every usage debit the org ever had. Built in the
-- migration's transaction, which holds ledger writes (debits wait) while it is
-- built: on a large ledger, build it first by hand with
--   CREATE INDEX CONCURRENTLY ledger_org_time ON ledger (org_id, created_at);
-- and this migration then finds it there. (CONCURRENTLY cannot run here: it
-- waits for every other transaction, including another process's migration
-- holding sqlx's migration lock, and the two deadlock.)
CREATE INDEX IF NOT EXISTS ledger_org_time ON ledger (org_id, created_at);
