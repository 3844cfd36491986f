#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit, integration and end-to-end
# tests, and the official openai SDK conformance run; then, over every schema this
# run's tests made in PostgreSQL, that each prepaid balance is its ledger's sum
# (tests/sql/ledger_invariant.sql); last, the instruction-count guard
# (bench/instructions.sh: a release build counted under callgrind against
# bench/instructions.json). Installs and starts what is missing first
# (idempotently) and stops only what it started.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export SY_STATE_DIR="${SY_STATE_DIR:-$ROOT/.local/test}"
# shellcheck source=lib/services.sh
source "$ROOT/scripts/lib/services.sh"

started_nats=0
started_clickhouse=0
cleanup() {
  if ((started_nats)); then stop_nats; fi
  if ((started_clickhouse)); then stop_clickhouse; fi
  stop_postgres
  stop_redis
}
trap cleanup EXIT

ensure_venv
ensure_chdb
if ! port_open 4222; then started_nats=1; fi
ensure_nats
if ! port_open 8123; then started_clickhouse=1; fi
ensure_clickhouse
ensure_postgres
ensure_redis
ensure_prometheus_bin
ensure_deploy_tools
ensure_browser
export SY_POSTGRES_URL="${SY_POSTGRES_URL:-$SY_POSTGRES_URL_DEFAULT}"
export SY_REDIS_URL="${SY_REDIS_URL:-$SY_REDIS_URL_DEFAULT}"
export SY_TEST_NATS_URL="${SY_TEST_NATS_URL:-nats://127.0.0.1:4222}"
export SY_TEST_CLICKHOUSE_URL="${SY_TEST_CLICKHOUSE_URL:-http://127.0.0.1:8123}"

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The newest schema before the tests (schemas' OIDs only grow): the ledger check
# below reads only the schemas this run made. (Not their names: the test
# database keeps every run's schemas, and their list outgrew what one argument
# to psql may hold.)
schemas_before=$(psql "$SY_POSTGRES_URL" -qtAX -c "SELECT max(oid)::bigint FROM pg_namespace")

say "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

say "the prepaid ledger's invariant, after the whole suite"
psql "$SY_POSTGRES_URL" -v ON_ERROR_STOP=1 -q -v before="$schemas_before" \
  -f tests/sql/ledger_invariant.sql

say "instructions per request against the committed baseline (bench/instructions.sh)"
bash bench/instructions.sh
