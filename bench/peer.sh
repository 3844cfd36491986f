#!/usr/bin/env bash
# The peer column (issue 23): TensorZero's gateway beside Switchyard, against
# the same mock, in one sitting, with the bare JetStream hop for the ratios.
# Rows are interleaved (direct, switchyard, direct, tensorzero), non-streamed at
# concurrency 1 and 64 and streamed (20 chunks) at 1. TensorZero runs without
# observability (no ClickHouse writes); Switchyard with its config file's key
# and accounting into ClickHouse (database "bench_peer", made fresh), as
# `switchyard all`.
#
#   TENSORZERO_BIN=/path/to/gateway bench/peer.sh
#
# This script does not build TensorZero: docs/BENCHMARKS.md ("Peer column")
# says from which commit and how (its own source, with TCP_NODELAY set on accepted sockets, as
# Switchyard's ingress sets it). Raw lines go to BENCH_RESULTS (default
# bench/results/<UTC date>.jsonl).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
: "${TENSORZERO_BIN:?set TENSORZERO_BIN to a built TensorZero gateway binary}"

started_nats=0
started_clickhouse=0
cleanup() {
  stop_bench_processes
  stop_pidfile "$RUN_DIR/bench-tensorzero.pid" bench-peer-tensorzero.toml
  if ((started_nats)); then stop_nats; fi
  if ((started_clickhouse)); then stop_clickhouse; fi
}
trap cleanup EXIT
if ! port_open 4222; then started_nats=1; fi
ensure_nats
if ! port_open 8123; then started_clickhouse=1; fi
ensure_clickhouse
if [[ -z ${SKIP_BUILD:-} ]]; then
  cargo build --release --locked --bin switchyard --bin mock-provider --bin sy-bench
fi
bench_ports_free
if port_open 18090; then echo "port 18090 is in use; stop what runs there first" >&2; exit 1; fi
start_bench_mock

conf="$STATE_DIR/bench-peer-switchyard.toml"
cat >"$conf" <<'TOML'
[server]
listen = "127.0.0.1:18080"

[nats]
url = "nats://127.0.0.1:4222"
namespace = "bench-peer"

[accounting]
usage_max_age = "2m"

[clickhouse]
url = "http://127.0.0.1:8123"
database = "bench_peer"

[[keys]]
name = "bench"
key = "sk-sy-local-dev"

[providers.openai]
kind = "openai_compatible"
base_url = "http://127.0.0.1:18081/v1"

[providers.openai.prices."gpt-4o-mini"]
input = "0.15"
output = "0.60"

[models."gpt-4o-mini"]
targets = [{ provider = "openai", model = "gpt-4o-mini" }]
TOML
curl -sf http://127.0.0.1:8123/ --data-binary 'DROP DATABASE IF EXISTS bench_peer' >/dev/null
"$TARGET/release/switchyard" --config "$conf" migrate >/dev/null
SWITCHYARD_LOG=warn "$TARGET/release/switchyard" --config "$conf" all >"$LOG_DIR/bench-switchyard.log" 2>&1 &
echo $! >"$RUN_DIR/bench-switchyard.pid"

tz_conf="$STATE_DIR/bench-peer-tensorzero.toml"
cat >"$tz_conf" <<'TOML'
[gateway]
observability.enabled = false
bind_address = "127.0.0.1:18090"

[models."gpt-4o-mini"]
routing = ["mock"]

[models."gpt-4o-mini".providers.mock]
type = "openai"
model_name = "gpt-4o-mini"
api_base = "http://127.0.0.1:18081/v1/"
api_key_location = "none"
TOML
RUST_LOG=warn "$TENSORZERO_BIN" --config-file "$tz_conf" >"$LOG_DIR/bench-tensorzero.log" 2>&1 &
echo $! >"$RUN_DIR/bench-tensorzero.pid"
wait_http http://127.0.0.1:18080/readyz 30 || { tail -20 "$LOG_DIR/bench-switchyard.log" >&2; exit 1; }
wait_http http://127.0.0.1:18090/health 30 || { tail -20 "$LOG_DIR/bench-tensorzero.log" >&2; exit 1; }

out="${BENCH_RESULTS:-bench/results/$(date -u +%Y-%m-%d).jsonl}"
tmp=$(mktemp)
trap 'rm -f "$tmp"; cleanup' EXIT
direct=http://127.0.0.1:18081/v1/chat/completions
via=http://127.0.0.1:18080/v1/chat/completions
tz=http://127.0.0.1:18090/openai/v1/chat/completions
tz_model=(--model tensorzero::model_name::gpt-4o-mini)
stream20=(--stream --prompt "Say something short. [[mock:tokens=20]]")
run() { # label url concurrency requests warmup [sy-bench args]
  "$TARGET/release/sy-bench" --label "$1" --url "$2" --concurrency "$3" --requests "$4" --warmup "$5" "${@:6}" | tee -a "$tmp"
}
hop() { # concurrency requests warmup
  "$TARGET/release/sy-bench" --hop --nats nats://127.0.0.1:4222 --label hop --concurrency "$1" \
    --requests "$2" --warmup "$3" | tee -a "$tmp"
}
say "Concurrency 1, non-streamed"
hop 1 3000 300
for _ in 1 2; do
  run direct "$direct" 1 3000 300
  run switchyard "$via" 1 3000 300
  run direct "$direct" 1 3000 300
  run tensorzero "$tz" 1 3000 300 "${tz_model[@]}"
done
say "Concurrency 64, non-streamed"
hop 64 20000 2000
for _ in 1 2; do
  run direct "$direct" 64 20000 2000
  run switchyard "$via" 64 20000 2000
  run direct "$direct" 64 20000 2000
  run tensorzero "$tz" 64 20000 2000 "${tz_model[@]}"
done
say "Concurrency 1, streamed (20 chunks)"
for _ in 1 2; do
  run direct "$direct" 1 2000 200 "${stream20[@]}"
  run switchyard "$via" 1 2000 200 "${stream20[@]}"
  run direct "$direct" 1 2000 200 "${stream20[@]}"
  run tensorzero "$tz" 1 2000 200 "${stream20[@]}" "${tz_model[@]}"
done
{
  echo "{\"machine\": \"$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)\", \"date\": \"$(date -u +%FT%TZ)\", \"commit\": \"$(git rev-parse --short HEAD 2>/dev/null || echo none)\", \"binary\": \"peer: $TENSORZERO_BIN\", \"note\": \"${NOTE:-bench/peer.sh}\"}"
  cat "$tmp"
} >>"$out"
python3 - "$tmp" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
hops = {r["concurrency"]: r for r in rows if r.get("mode") == "hop"}
timed = [r for r in rows if r.get("mode") != "hop"]
print()
print("| row | mode | conc | direct p50 | added p50 | × hop p50 | direct p99 | added p99 | direct rps | rps | share of direct | share of hop |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for d, v in zip(timed[0::2], timed[1::2]):
    key = "ttft_p" if d["stream"] else "p"
    h = hops.get(d["concurrency"])
    a50, a99 = v[key + "50_ms"] - d[key + "50_ms"], v[key + "99_ms"] - d[key + "99_ms"]
    ratio = f"{a50 / h['p50_ms']:.2f}x" if h else "-"
    share_hop = f"{100 * v['rps'] / h['rps']:.1f} %" if h and not d["stream"] else "-"
    mode = "stream (TTFT)" if d["stream"] else "non-stream"
    print(f"| {v['label']} | {mode} | {d['concurrency']} | {d[key + '50_ms']:.3f} | {a50:+.3f} | {ratio} | {d[key + '99_ms']:.3f} | {a99:+.3f} | {d['rps']:.0f} | {v['rps']:.0f} | {100 * v['rps'] / d['rps']:.1f} % | {share_hop} |")
PY
echo "Raw results appended to $out" >&2
