#!/usr/bin/env bash
# Slow and greedy clients against `switchyard all` with the default [server]
# limits: 200 slowloris connections, then 100 stalled 4 MiB bodies; reports
# what each got and the process's RSS before, at peak and after (see
# bench/intake.py). Starts its own mock (18081) and switchyard (18080, NATS
# namespace "bench-intake"); uses the NATS on 4222 (started when missing).
# Raw results go to bench/results/<UTC date>-intake.jsonl. About 90 s.
#
#   bench/intake.sh
#   SWITCHYARD_BIN=/tmp/switchyard-old NOTE="before" bench/intake.sh   # another build
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
BIN=${SWITCHYARD_BIN:-$TARGET/release/switchyard}

started_nats=0
cleanup() {
  stop_bench_processes
  if ((started_nats)); then stop_nats; fi
}
trap cleanup EXIT
if ! port_open 4222; then started_nats=1; fi
ensure_nats

if [[ -z ${SKIP_BUILD:-} ]]; then
  say "Building release binaries"
  cargo build --release --locked --bin switchyard --bin mock-provider
fi

bench_ports_free
start_bench_mock
conf="$STATE_DIR/bench-switchyard-intake.toml"
cat >"$conf" <<'TOML'
[server]
listen = "127.0.0.1:18080"

[nats]
url = "nats://127.0.0.1:4222"
namespace = "bench-intake"

[[keys]]
name = "bench"
key = "sk-sy-local-dev"

[providers.openai]
kind = "openai_compatible"
base_url = "http://127.0.0.1:18081/v1"

[models."gpt-4o-mini"]
targets = [{ provider = "openai", model = "gpt-4o-mini" }]
TOML
SWITCHYARD_LOG=warn "$BIN" --config "$conf" all >"$LOG_DIR/bench-switchyard.log" 2>&1 &
pid=$!
echo $pid >"$RUN_DIR/bench-switchyard.pid"
wait_http http://127.0.0.1:18081/healthz 20
wait_http http://127.0.0.1:18080/readyz 30 || { tail -20 "$LOG_DIR/bench-switchyard.log" >&2; exit 1; }

say "Slow and greedy clients (about 90 s)"
result=$(python3 bench/intake.py "$pid" 127.0.0.1:18080 sk-sy-local-dev)
out="bench/results/$(date -u +%Y-%m-%d)-intake.jsonl"
header="{\"machine\": \"$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)\", \"date\": \"$(date -u +%FT%TZ)\", \"commit\": \"$(git rev-parse --short HEAD 2>/dev/null || echo none)\", \"binary\": \"$BIN\", \"note\": \"${NOTE:-}\"}"
printf '%s\n%s\n' "$header" "$result" >>"$out"
python3 -c 'import json,sys; print(json.dumps(json.loads(sys.argv[1]), indent=2))' "$result"
echo "Raw results appended to $out" >&2
