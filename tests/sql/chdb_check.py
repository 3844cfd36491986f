"""Applies every ClickHouse migration and runs every query of docs/analytics.md,
crates/accounting/sql/ and the Grafana dashboards' SQL on current ClickHouse, in-process through PyPI's chdb-core.

Run by the e2e test `accounting::schema_and_queries_run_on_current_clickhouse`:
    python tests/sql/chdb_check.py REPO_ROOT
Exits 0 when all ran (printing the server version), non-zero with the failing SQL.
"""

import glob
import os
import sys
import tempfile

from chdb import session


def statements(sql):
    code = "\n".join(l for l in sql.splitlines() if not l.lstrip().startswith("--"))
    return [s.strip() for s in code.split(";") if s.strip()]


def run(s, sql):
    try:
        return s.query(sql, "TSV")
    except Exception as e:  # chdb raises on any server error
        print(f"FAILED: {e}\n{sql}", file=sys.stderr)
        sys.exit(1)


def main():
    root = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        s = session.Session(tmp)
        print("ClickHouse", str(run(s, "SELECT version()")).strip())
        run(s, "CREATE DATABASE IF NOT EXISTS switchyard")
        for path in sorted(glob.glob(os.path.join(root, "migrations/clickhouse/*.sql"))):
            for stmt in statements(open(path).read()):
                run(s, stmt)
            print("applied", os.path.basename(path))
        run(s, """INSERT INTO switchyard.requests
            (ts, event_id, request_id, attempt, received_ms, key_id, provider, model, upstream_model,
             status, input_tokens, cached_input_tokens, output_tokens, cost, billed, latency_ms, ttft_ms,
             tag_keys, tag_values)
            VALUES
            (now(), 'a-1', '01a20713-2ed0-75fd-9bf5-cd1cdf72af26', 1, 1, 'k1', 'openai', 'gpt-4o-mini', 'gpt-4o-mini',
             'ok', 10, 2, 16, 0.0000105, 0.0000126, 12, 5, ['feature', 'tier'], ['search', 'free']),
            (now(), 'b-1', '01a20713-2ed0-75fd-9bf5-cd1cdf72af27', 1, 2, 'k2', 'openai', 'gpt-4.1', 'gpt-4.1',
             'error', 0, 0, 0, NULL, NULL, 3, NULL, [], [])""")
        rolled = str(run(s, "SELECT sum(requests), sum(unpriced) FROM switchyard.daily_spend")).split()
        if rolled != ["2", "1"]:
            print(f"FAILED: daily roll-up gave {rolled}", file=sys.stderr)
            sys.exit(1)
        doc = open(os.path.join(root, "docs/analytics.md")).read()
        queries = [b.split("```")[0].strip() for b in doc.split("```sql")[1:]]
        for q in queries:
            out = str(run(s, q)).strip()
            if not out:
                print(f"FAILED: no rows\n{q}", file=sys.stderr)
                sys.exit(1)
        print(f"ran {len(queries)} analytics queries")
        # The invoice's queries (crates/accounting/sql/), with their parameters
        # (org_id, start, end) filled in: the two rows above have no org. What
        # each must give: its rows, each of that many columns (the Rust side
        # reads them by position), and the distinct requests' count.
        invoice = ["''", "0", "4000000000"]
        expected = {
            "invoice_lines.sql": (invoice, 2, 17, None),
            "invoice_requests.sql": (invoice, 1, 1, "2"),
            # The console's: both rows in one minute's bucket (two
            # requests); both targets; the one row tagged tier=free.
            "console_traffic.sql": (["60", "60", "0", "''", "0", "4000000000"], 1, 11, None),
            "console_targets.sql": (["0", "''", "0", "4000000000"], 2, 7, None),
            "console_requests.sql": (
                ["0", "0", "''", "0", "'00000000-0000-0000-0000-000000000000'", "0", "''", "0", "''",
                 "0", "''", "1", "'tier'", "'tier'", "'free'", "10"], 1, 27, None),
        }
        for path in sorted(glob.glob(os.path.join(root, "crates/accounting/sql/*.sql"))):
            name = os.path.basename(path)
            q = " ".join(statements(open(path).read()))
            params, n_rows, n_cols, value = expected[name]
            for param in params:
                q = q.replace("?", param, 1)
            if "?" in q:
                print(f"FAILED: {name} has more parameters than the check fills", file=sys.stderr)
                sys.exit(1)
            rows = [r.split("\t") for r in str(run(s, q)).rstrip("\n").split("\n") if r]
            if len(rows) != n_rows or any(len(r) != n_cols for r in rows) or (
                value is not None and rows[0][0] != value
            ):
                print(f"FAILED: {name} gave {rows}\n{q}", file=sys.stderr)
                sys.exit(1)
            print("ran", name)
        # The Grafana spend dashboard's SQL (deploy/grafana/dashboards), with
        # Grafana's time macro filled in.
        import json

        for path in sorted(glob.glob(os.path.join(root, "deploy/grafana/dashboards/*.json"))):
            for panel in json.load(open(path))["panels"]:
                for target in panel.get("targets", []):
                    if "rawSql" in target:
                        run(s, target["rawSql"].replace("$__timeFilter(ts)", "ts >= now() - 86400"))
            print("ran the SQL of", os.path.basename(path))


if __name__ == "__main__":
    main()
