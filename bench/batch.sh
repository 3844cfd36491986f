#!/usr/bin/env bash
# Batch jobs against the mock, in one run on this machine:
#  1. batch throughput: a 10,000-item batch alone (items/s, with the provider's
#     batch_concurrency cap stated);
#  2. interactive latency at concurrency 1 (direct to the mock and through
#     Switchyard, non-streamed) without a batch, then while a 10,000-item batch
#     runs: how much the batch adds to interactive p50/p99.
# Starts its own mock (18081) and `switchyard all` (18080, NATS namespace
# "bench-batch") and stops them at the end; uses the NATS on 4222 (started when
# missing). Raw results go to bench/results/<UTC date>-batch.jsonl.
#
#   bench/batch.sh                 # full run (~2 min)
#   CAP=16 RATE=0 ITEMS=20000 bench/batch.sh   # RATE: [batch] max_rate (0: none)
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CAP=${CAP:-4}
RATE=${RATE:-100}
ITEMS=${ITEMS:-10000}
REQS=${REQS:-10000}

started_nats=0
cleanup() {
  stop_bench_processes
  if ((started_nats)); then stop_nats; fi
}
trap cleanup EXIT
if ! port_open 4222; then started_nats=1; fi
ensure_nats

say "Building release binaries"
cargo build --release --locked --bin switchyard --bin mock-provider --bin sy-bench

bench_ports_free
start_bench_mock
conf="$STATE_DIR/bench-batch.toml"
cat >"$conf" <<TOML
[server]
listen = "127.0.0.1:18080"

[nats]
url = "nats://127.0.0.1:4222"
namespace = "bench-batch"

[[keys]]
name = "bench"
key = "sk-sy-local-dev"

[providers.openai]
kind = "openai_compatible"
base_url = "http://127.0.0.1:18081/v1"
batch_concurrency = $CAP

[batch]
max_rate = $RATE

[models."gpt-4o-mini"]
targets = [{ provider = "openai", model = "gpt-4o-mini" }]
TOML
SWITCHYARD_LOG=warn "$TARGET/release/switchyard" --config "$conf" all >"$LOG_DIR/bench-switchyard.log" 2>&1 &
echo $! >"$RUN_DIR/bench-switchyard.pid"
wait_http http://127.0.0.1:18081/healthz 20
wait_http http://127.0.0.1:18080/readyz 30 || { tail -20 "$LOG_DIR/bench-switchyard.log" >&2; exit 1; }

input="$STATE_DIR/bench-batch.jsonl"
python3 - "$input" "$ITEMS" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        f.write(json.dumps({"custom_id": f"t{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Classify ticket {i}. [[mock:tokens=16]]"}]}}) + "\n")
PY
export SWITCHYARD_URL=http://127.0.0.1:18080 SWITCHYARD_API_KEY=sk-sy-local-dev
submit() { "$TARGET/release/switchyard" batch submit "$input"; }
# Prints "<status> <completed> <failed> <seconds since in_progress>" for a batch.
poll() {
  curl -s -H "authorization: Bearer $SWITCHYARD_API_KEY" "$SWITCHYARD_URL/v1/batches/$1" |
    python3 -c 'import json,sys,time; b=json.load(sys.stdin); c=b["request_counts"]; print(b["status"], c["completed"], c["failed"], (time.time()-b["in_progress_at"]) if b.get("in_progress_at") else 0)'
}
wait_batch() { # id -> prints items/s
  local start="" status done failed t
  while true; do
    read -r status done failed t < <(poll "$1")
    if [[ -z $start && $status == in_progress ]]; then start=$(date +%s.%N); fi
    case $status in completed|failed|cancelled|expired) break ;; esac
    sleep 0.2
  done
  local end; end=$(date +%s.%N)
  python3 -c "print(f'{$done / ($end - ${start:-$end} + 1e-9):.0f} items/s ({$done} done, {$failed} failed, {($end - ${start:-$end}):.1f} s)')"
}

out="bench/results/$(date -u +%Y-%m-%d)-batch.jsonl"
tmp=$(mktemp)
run() { # label url
  "$TARGET/release/sy-bench" --label "$1" --url "$2" --concurrency 1 --requests "$REQS" --warmup 300 | tee -a "$tmp"
}
direct=http://127.0.0.1:18081/v1/chat/completions
via=http://127.0.0.1:18080/v1/chat/completions

say "Batch alone: $ITEMS items, batch_concurrency $CAP, max_rate $RATE"
id=$(submit)
alone=$(wait_batch "$id")
echo "$alone"

say "Interactive, concurrency 1, no batch"
run direct "$direct"
run switchyard "$via"

say "Interactive, concurrency 1, while a $ITEMS-item batch runs"
id=$(submit)
until [[ $(poll "$id" | cut -d' ' -f1) == in_progress ]]; do sleep 0.1; done
run direct-during-batch "$direct"
run switchyard-during-batch "$via"
read -r status done failed t < <(poll "$id")
echo "batch $status after the interactive run ($done of $ITEMS done)"
if [[ $status != in_progress ]]; then
  echo "WARNING: the batch ended before the interactive run did; raise ITEMS" >&2
fi
during=$(wait_batch "$id")
echo "$during"

{
  echo "{\"machine\": \"$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)\", \"date\": \"$(date -u +%FT%TZ)\", \"commit\": \"$(git rev-parse --short HEAD 2>/dev/null || echo none)\", \"batch_concurrency\": $CAP, \"max_rate\": $RATE, \"items\": $ITEMS, \"alone\": \"$alone\", \"status_after_interactive\": \"$status $done\", \"with_interactive\": \"$during\"}"
  cat "$tmp"
} >>"$out"
python3 - "$tmp" <<'PY'
import json, sys
rows = {r["label"]: r for r in map(json.loads, open(sys.argv[1]))}
print()
print("| interactive c=1 | direct p50 | via p50 | added p50 | direct p99 | via p99 | added p99 |")
print("|---|---|---|---|---|---|---|")
for name, d, v in [("no batch", "direct", "switchyard"), ("batch running", "direct-during-batch", "switchyard-during-batch")]:
    d, v = rows[d], rows[v]
    print(f"| {name} | {d['p50_ms']:.3f} | {v['p50_ms']:.3f} | {v['p50_ms'] - d['p50_ms']:+.3f} | {d['p99_ms']:.3f} | {v['p99_ms']:.3f} | {v['p99_ms'] - d['p99_ms']:+.3f} |")
a, b = rows["switchyard"], rows["switchyard-during-batch"]
print(f"\nvia p99 without a batch {a['p99_ms']:.3f} ms, with one {b['p99_ms']:.3f} ms: {100 * (b['p99_ms'] / a['p99_ms'] - 1):+.0f} %")
PY
rm -f "$tmp"
echo "Raw results appended to $out" >&2
