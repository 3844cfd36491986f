-- The prepaid ledger's invariant, checked after the whole test suite (scripts/test.sh)
-- in every schema this run of the tests made: each org's stored balance, credited
-- and debited figures are exactly the sums of its ledger rows. Fails (psql exits
-- non-zero) naming the schema and how many orgs disagree. The newest schema's OID
-- before the run is passed as a psql variable (schemas made later have larger OIDs):
--   psql URL -v ON_ERROR_STOP=1 -v before="$MAX_OID" -f tests/sql/ledger_invariant.sql
SET sy.before = :'before';
DO $$
DECLARE
    s text;
    bad bigint;
    checked int := 0;
    orgs bigint := 0;
    n bigint;
BEGIN
    FOR s IN
        SELECT t.table_schema FROM information_schema.tables t
        JOIN pg_namespace n ON n.nspname = t.table_schema
        WHERE t.table_name = 'org_balances'
        AND n.oid::bigint > current_setting('sy.before')::bigint
        ORDER BY 1
    LOOP
        EXECUTE format(
            'SELECT count(*) FILTER (WHERE COALESCE(b.balance_nanos, 0) <> COALESCE(l.total, 0)
                 OR COALESCE(b.credited_nanos, 0) <> COALESCE(l.credited, 0)
                 OR COALESCE(b.debited_nanos, 0) <> COALESCE(l.debited, 0)), count(*)
             FROM %I.org_balances b
             FULL JOIN (SELECT org_id, sum(amount_nanos)::bigint AS total,
                 COALESCE(sum(amount_nanos) FILTER (WHERE kind <> ''debit''), 0)::bigint AS credited,
                 COALESCE(-sum(amount_nanos) FILTER (WHERE kind = ''debit''), 0)::bigint AS debited
                 FROM %I.ledger GROUP BY org_id) l USING (org_id)', s, s)
            INTO bad, n;
        IF bad > 0 THEN
            RAISE EXCEPTION 'schema %: % org(s) whose stored balance is not the sum of their ledger', s, bad;
        END IF;
        checked := checked + 1;
        orgs := orgs + n;
    END LOOP;
    RAISE NOTICE 'ledger invariant holds: % org balance(s) in % schema(s)', orgs, checked;
END $$;
