#!/usr/bin/env bash
# Measures, in one run on this machine, a direct call to the mock provider against
# the same call through Switchyard: p50/p99 latency at concurrency 1 and
# throughput at concurrency 64, non-streamed and streamed (time to first token).
# Starts its own mock (18081) and switchyard (18080, NATS namespace "bench") and
# stops them at the end; uses the NATS on 4222, starting one if none answers.
# Then the accounting pipeline (usage stream -> ClickHouse): throughput, lag at
# 1,000 events/s, and the cost of a token estimate (needs ClickHouse on 8123;
# started when missing). Raw results go to bench/results/<UTC date>.jsonl; a
# summary table to stdout.
#
#   bench/run.sh            # full run (~2-3 min)
#   QUICK=1 bench/run.sh    # fewer requests, for a smoke check
#   SWITCHYARD_BIN=/tmp/old NOTE=before bench/run.sh   # another build of switchyard
#   SKIP_BUILD=1 ...        # use the release binaries as they are
#   NO_TENANTS=1 ...        # no PostgreSQL, no tenant's key (for a build from before them)
#   NO_LIMITS=1 ...         # no Redis, no rate-limited key (for a build from before them)
#   ONLY=limits ...         # only the rate-limit and budget rows (and sy-limits-bench)
#   ONLY=tracing ...        # only the tracing rows
#   ONLY=cache ...          # only the response cache rows (needs limits: Redis)
#   ONLY=cache CACHE_MEMORY_ONLY=1 ...  # only memory-tier hits against the direct call
#   ONLY=callgrind ...      # only the instruction counts of the limit keys and a memory-tier cache hit
#                           # (CALLGRIND_KEEP=dir keeps callgrind's files)
#   ONLY=hop ...            # only the bare JetStream hop and Switchyard beside it (non-streamed and streamed
#                           # with 20 chunks, c=1 and 64, the config's key, every feature on, and "model":
#                           # "auto"), where the time goes (stages), and each process's memory (rss)
#   BENCH_RESULTS=file ...  # append the raw results there (default bench/results/<UTC date>.jsonl)
#   NO_TRACING=1 ...        # no traced switchyard (for a build from before traces)
#   CPU=1 ...               # and CPU per request of each process on the path, per row
#   CALLGRIND=1 ...         # and, last, instructions per request of the tenant key
#                           # with and without limits (switchyard under callgrind)
#
# With tenants on (the default) the ingress also authenticates a tenant's key
# from its in-memory table (PostgreSQL schema "bench", made fresh): the rows
# "tenant-key" against "switchyard" (the config file's key), interleaved, show
# what authentication from memory costs. With limits on (the default, needs
# tenants) a second tenant's key has RPM, TPM and concurrency limits in Redis
# (high enough never to refuse): the rows "limited-key" against "tenant-key",
# interleaved, show what the limits cost, and Redis's own CPU per request is
# read from its INFO before and after; a third key with the same limits and a
# budget (rows "budgeted-key" against "tenant-key", interleaved) shows what
# limits and a budget together cost.
# With tracing (the default) a second switchyard (18082, namespace
# "bench-traced") exports every span over OTLP/HTTP to the mock's /v1/traces:
# the rows "traced" against "switchyard", interleaved, show what tracing on
# costs; "switchyard" itself runs with tracing off.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

started_nats=0
started_clickhouse=0
tenants=1
limits=1
if [[ -n ${NO_TENANTS:-} ]]; then tenants=0; limits=0; fi
if [[ -n ${NO_LIMITS:-} ]]; then limits=0; fi
cleanup() {
  stop_bench_processes
  if ((started_nats)); then stop_nats; fi
  if ((started_clickhouse)); then stop_clickhouse; fi
  if ((tenants)); then stop_postgres; fi
  if ((limits)); then stop_redis; fi
}
trap cleanup EXIT

if ! port_open 4222; then started_nats=1; fi
ensure_nats
if ! port_open 8123; then started_clickhouse=1; fi
ensure_clickhouse
if ((tenants)); then
  ensure_postgres
  PGPASSWORD=switchyard psql -q -h 127.0.0.1 -U switchyard switchyard \
    -c "DROP SCHEMA IF EXISTS bench CASCADE" -c "CREATE SCHEMA bench" >/dev/null
fi
if ((limits)); then ensure_redis; fi

if [[ -z ${SKIP_BUILD:-} ]]; then
  say "Building release binaries"
  cargo build --release --locked --bin switchyard --bin mock-provider --bin sy-bench --bin sy-accounting-bench --bin sy-classifier-bench --bin sy-auth-bench --bin sy-limits-bench
fi

bench_ports_free

start_bench_mock
conf="$STATE_DIR/bench-switchyard.toml"
cat >"$conf" <<'TOML'
[server]
listen = "127.0.0.1:18080"

[nats]
url = "nats://127.0.0.1:4222"
namespace = "bench"

# The accounting consumer runs in the same process, into ClickHouse's database
# "bench" (made fresh); usage events are kept only briefly all the same.
[accounting]
usage_max_age = "2m"

[clickhouse]
url = "http://127.0.0.1:8123"
database = "bench"

[[keys]]
name = "bench"
key = "sk-sy-local-dev"

[providers.openai]
kind = "openai_compatible"
base_url = "http://127.0.0.1:18081/v1"

[providers.anthropic]
kind = "anthropic"
base_url = "http://127.0.0.1:18081/v1"

[providers.openai.prices."gpt-4o-mini"]
input = "0.15"
output = "0.60"

[models."gpt-4o-mini"]
targets = [{ provider = "openai", model = "gpt-4o-mini" }]

[providers.anthropic.prices."claude-bench"]
input = "0.25"
output = "1.25"

[models."claude-bench"]
targets = [{ provider = "anthropic", model = "claude-bench" }]

# "model": "auto" (the rows "auto"): the classifier's class picks the route,
# the cheapest priced target of it answers (the OpenAI mock's).
[routers.auto]
strategy = "cheapest"

[[routers.auto.routes]]
name = "code"
classes = ["code"]
targets = [{ provider = "openai", model = "gpt-4o-mini" }]

[[routers.auto.routes]]
name = "everything-else"
targets = [
  { provider = "openai", model = "gpt-4o-mini" },
  { provider = "anthropic", model = "claude-bench" },
]
TOML
if ((tenants)); then
  cat >>"$conf" <<'TOML'

[postgres]
url = "postgres://switchyard:switchyard@127.0.0.1:5432/switchyard?options=-c%20search_path%3Dbench"

[tenants]
key_pepper = "bench pepper, not a secret, 32 bytes or more"
key_env = "bench"

[[admin_tokens]]
name = "bench"
token = "sk-sy-admin-bench-token"
role = "owner"
TOML
fi
curl -sf http://127.0.0.1:8123/ --data-binary 'DROP DATABASE IF EXISTS bench' >/dev/null
"${SWITCHYARD_BIN:-$TARGET/release/switchyard}" --config "$conf" migrate >/dev/null
if ((limits)); then
  # The response cache is on for requests that ask (x-switchyard-cache: use);
  # the other rows do not. Last in the file: the memory-tier copy adds a line.
  printf '\n[redis]\nurl = "redis://127.0.0.1:6379"\n\n[cache]\nenabled = true\n' >>"$conf"
fi
SWITCHYARD_LOG=warn "${SWITCHYARD_BIN:-$TARGET/release/switchyard}" --config "$conf" all >"$LOG_DIR/bench-switchyard.log" 2>&1 &
echo $! >"$RUN_DIR/bench-switchyard.pid"
wait_http http://127.0.0.1:18081/healthz 20
wait_http http://127.0.0.1:18080/readyz 30 || { tail -20 "$LOG_DIR/bench-switchyard.log" >&2; exit 1; }
if ((tenants)); then
  admin=("${SWITCHYARD_BIN:-$TARGET/release/switchyard}" admin --url http://127.0.0.1:18080 --token sk-sy-admin-bench-token --json)
  org=$("${admin[@]}" orgs create bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  project=$("${admin[@]}" projects create --org "$org" bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  tenant_key=$("${admin[@]}" keys create --project "$project" --model gpt-4o-mini bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
fi
if ((limits)); then
  limited=$("${admin[@]}" keys create --project "$project" --model gpt-4o-mini limited)
  limited_key=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["key"])' "$limited")
  limited_id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$limited")
  "${admin[@]}" keys limits "$limited_id" --rpm 1000000000 --tpm 1000000000 --concurrency 100000 >/dev/null
  budgeted=$("${admin[@]}" keys create --project "$project" --model gpt-4o-mini budgeted)
  budgeted_key=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["key"])' "$budgeted")
  budgeted_id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$budgeted")
  "${admin[@]}" keys limits "$budgeted_id" --rpm 1000000000 --tpm 1000000000 --concurrency 100000 \
    --budget-usd 1000000000 --period month >/dev/null
  # The same limits and budget, for "model": "auto" (the rows "auto").
  routed=$("${admin[@]}" keys create --project "$project" --model auto routed)
  routed_key=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["key"])' "$routed")
  routed_id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$routed")
  "${admin[@]}" keys limits "$routed_id" --rpm 1000000000 --tpm 1000000000 --concurrency 100000 \
    --budget-usd 1000000000 --period month >/dev/null
  # Its requests are refused (503) until a reconciliation round has marked
  # the new org's budgets in Redis (the change starts one within ~50 ms).
  ready=0
  for _ in $(seq 100); do
    if "$TARGET/release/sy-bench" --label ready --url http://127.0.0.1:18080/v1/chat/completions --concurrency 1 \
      --requests 1 --warmup 0 --key "$budgeted_key" | grep -q '"errors":0,'; then
      ready=1
      break
    fi
    sleep 0.1
  done
  if ((!ready)); then
    echo "the budgeted key is still refused after 100 tries" >&2
    tail -5 "$LOG_DIR/bench-switchyard.log" >&2
    exit 1
  fi
fi
redis_cpu() { # seconds of CPU Redis has used (user + system)
  redis-cli -p 6379 info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/{s+=$2} END {printf "%.6f", s}'
}

scale=1
if [[ -n ${QUICK:-} ]]; then scale=10; fi
out="${BENCH_RESULTS:-bench/results/$(date -u +%Y-%m-%d).jsonl}"
tmp=$(mktemp)
cpu_ticks() { # CPU clock ticks (user + system) of each long-lived process on the path, as JSON
  python3 -c '
import json, os
ticks = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    if name in ("switchyard", "nats-server", "redis-server", "mock-provider"):
        ticks[name] = ticks.get(name, 0) + int(fields[11]) + int(fields[12])
print(json.dumps(ticks))'
}
cpu_row() { # ticks-before label concurrency requests: CPU per request of each process since, as JSON
  python3 -c '
import json, os, sys
b, a = json.loads(sys.argv[1]), json.loads(sys.argv[2])
n, hz = int(sys.argv[5]), os.sysconf("SC_CLK_TCK")
per = {k: round((a[k] - b.get(k, 0)) / hz / n * 1e6, 1) for k in a}
per["total"] = round(sum(per.values()), 1)
print(json.dumps({"label": sys.argv[3] + "-cpu", "concurrency": int(sys.argv[4]), "requests": n, "cpu_us_per_request": per}))' \
    "$1" "$(cpu_ticks)" "$2" "$3" "$4" | tee -a "$tmp.acct"
}
run() { # label url concurrency requests warmup [--stream]
  local before
  if [[ -n ${CPU:-} ]]; then before=$(cpu_ticks); fi
  "$TARGET/release/sy-bench" --label "$1" --url "$2" --concurrency "$3" \
    --requests $(($4 / scale)) --warmup $(($5 / scale)) "${@:6}" | tee -a "$tmp"
  if [[ -n ${CPU:-} ]]; then cpu_row "$before" "$1" "$3" $((($4 + $5) / scale)); fi
}
direct=http://127.0.0.1:18081/v1/chat/completions
via=http://127.0.0.1:18080/v1/chat/completions
all=1
if [[ -n ${ONLY:-} ]]; then all=0; fi
tracing=1
if [[ -n ${NO_TRACING:-} || (-n ${ONLY:-} && ${ONLY:-} != tracing) ]]; then tracing=0; fi
limit_rows=$limits
if [[ ${ONLY:-} == tracing || ${ONLY:-} == cache || ${ONLY:-} == hop ]]; then limit_rows=0; fi
cache_rows=0
if ((limits)) && [[ -z ${ONLY:-} || ${ONLY:-} == cache ]]; then cache_rows=1; fi
timed_rows=1
if [[ ${ONLY:-} == callgrind ]]; then timed_rows=0; CALLGRIND=1; fi
hop() { # label concurrency requests warmup: the bare JetStream hop (sy-bench --hop)
  local before
  if [[ -n ${CPU:-} ]]; then before=$(cpu_ticks); fi
  "$TARGET/release/sy-bench" --hop --nats nats://127.0.0.1:4222 --label "$1" --concurrency "$2" \
    --requests $(($3 / scale)) --warmup $(($4 / scale)) | tee -a "$tmp.acct"
  if [[ -n ${CPU:-} ]]; then cpu_row "$before" "$1" "$2" $((($3 + $4) / scale)); fi
}
# Every feature on: a tenant's key from PostgreSQL with RPM, TPM and
# concurrency limits and a budget in Redis (the config's key without them
# where there are no limits), metrics and accounting into ClickHouse.
all_on=()
auto=(--model auto)
if ((limits)); then
  all_on=(--key "$budgeted_key")
  auto=(--model auto --key "$routed_key")
elif ((tenants)); then
  all_on=(--key "$tenant_key")
fi
# Streamed rows against the hop: 20 chunks an answer.
stream20=(--stream --prompt "Say something short. [[mock:tokens=20]]")
rss() { # label: resident memory of each process on the path now and at its peak, MB, as JSON
  python3 - "$1" <<'PY'
import json, os, sys
out = {"label": sys.argv[1] + "-rss"}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status") if ":" in l)
    except OSError:
        continue
    name = status.get("Name", "").strip()
    if name in ("switchyard", "nats-server", "mock-provider"):
        mb = lambda k: round(int(status.get(k, "0 kB").split()[0]) / 1024, 1)
        out.setdefault(name, []).append({"rss_mb": mb("VmRSS"), "peak_mb": mb("VmHWM")})
print(json.dumps(out))
PY
}
if ((all)) || [[ ${ONLY:-} == hop ]]; then
say "Non-streamed, concurrency 1, and the bare JetStream hop; where the time goes"
hop hop 1 3000 300
run direct "$direct" 1 3000 300
run switchyard "$via" 1 3000 300
run direct "$direct" 1 3000 300
run all-on "$via" 1 3000 300 "${all_on[@]}"
"$TARGET/release/sy-bench" --label stages --url "$via" --concurrency 1 --requests $((3000 / scale)) \
  --warmup $((300 / scale)) --stages "${all_on[@]}" | tee -a "$tmp.acct"
# The same with 5 ms between requests: what each request leaves behind (its
# completion mark and usage stored, the accounting consumer's insert, the
# observations) is done before the next one comes, so it does not compete
# with it for the two cores.
run direct-idle "$direct" 1 1000 100 --gap-ms 5
run all-on-idle "$via" 1 1000 100 --gap-ms 5 "${all_on[@]}"
"$TARGET/release/sy-bench" --label stages-idle --url "$via" --concurrency 1 --requests $((1000 / scale)) \
  --warmup $((100 / scale)) --gap-ms 5 --stages "${all_on[@]}" | tee -a "$tmp.acct"
say "Non-streamed, concurrency 64, and the bare JetStream hop"
hop hop 64 20000 2000
run direct "$direct" 64 20000 2000
run switchyard "$via" 64 20000 2000
run direct "$direct" 64 20000 2000
run all-on "$via" 64 20000 2000 "${all_on[@]}"
run direct "$direct" 64 20000 2000
run auto "$via" 64 20000 2000 "${auto[@]}"
rss c64 | tee -a "$tmp.acct"
say "Model auto (classifier and router), concurrency 1"
run direct "$direct" 1 3000 300
run auto "$via" 1 3000 300 "${auto[@]}"
say "Streamed (20 chunks), concurrency 1 and 64, against the same hop"
run direct "$direct" 1 2000 200 "${stream20[@]}"
run switchyard "$via" 1 2000 200 "${stream20[@]}"
run direct "$direct" 1 2000 200 "${stream20[@]}"
run all-on "$via" 1 2000 200 "${stream20[@]}" "${all_on[@]}"
run direct "$direct" 64 10000 1000 "${stream20[@]}"
run switchyard "$via" 64 10000 1000 "${stream20[@]}"
run direct "$direct" 64 10000 1000 "${stream20[@]}"
run all-on "$via" 64 10000 1000 "${stream20[@]}" "${all_on[@]}"
rss c64-stream | tee -a "$tmp.acct"
fi
if ((tenants && all)); then
  say "Authentication from memory: the config's key and a tenant's key, interleaved"
  for _ in 1 2; do
    run direct "$direct" 1 3000 300
    run switchyard "$via" 1 3000 300
    run direct "$direct" 1 3000 300
    run tenant-key "$via" 1 3000 300 --key "$tenant_key"
  done
  for _ in 1 2 3 4; do
    run direct "$direct" 64 20000 2000
    run switchyard "$via" 64 20000 2000
    run direct "$direct" 64 20000 2000
    run tenant-key "$via" 64 20000 2000 --key "$tenant_key"
  done
fi
if ((limit_rows && timed_rows)); then
  say "Rate limits in Redis: a tenant's key without limits and one with RPM, TPM and concurrency, interleaved"
  limited_requests=0
  redis-cli -p 6379 config resetstat >/dev/null
  cpu_before=$(redis_cpu)
  for _ in 1 2; do
    run tenant-key "$via" 1 3000 300 --key "$tenant_key"
    run limited-key "$via" 1 3000 300 --key "$limited_key"
    limited_requests=$((limited_requests + 3300 / scale))
  done
  for _ in 1 2 3 4; do
    run tenant-key "$via" 64 20000 2000 --key "$tenant_key"
    run limited-key "$via" 64 20000 2000 --key "$limited_key"
    limited_requests=$((limited_requests + 22000 / scale))
  done
  cpu_after=$(redis_cpu)
  redis_calls=$(redis-cli -p 6379 info commandstats | tr -d '\r' | python3 -c '
import json, sys
calls = {}
for line in sys.stdin:
    if line.startswith("cmdstat_"):
        name, _, stats = line[8:].strip().partition(":")
        fields = dict(kv.split("=") for kv in stats.split(","))
        calls[name] = [int(fields["calls"]), float(fields["usec_per_call"])]
print(json.dumps(calls))')
  say "Budgets: a tenant's key without limits, and the same limits as above with a budget, interleaved"
  for _ in 1 2; do
    run tenant-key "$via" 1 3000 300 --key "$tenant_key"
    run budgeted-key "$via" 1 3000 300 --key "$budgeted_key"
  done
  for _ in 1 2 3 4; do
    run tenant-key "$via" 64 20000 2000 --key "$tenant_key"
    run budgeted-key "$via" 64 20000 2000 --key "$budgeted_key"
  done
  python3 -c '
import json, sys
b, a, n = map(float, sys.argv[1:4])
calls = {k: {"per_request": round(c / n, 2), "usec_per_call": u} for k, (c, u) in json.loads(sys.argv[4]).items()}
print(json.dumps({"label": "redis-cpu", "requests": int(n), "redis_cpu_us_per_request": round((a - b) / n * 1e6, 2), "commands": calls}))' \
    "$cpu_before" "$cpu_after" "$limited_requests" "$redis_calls" | tee -a "$tmp.acct"
  say "Admission alone: one client, one call at a time (sy-limits-bench)"
  "$TARGET/release/sy-limits-bench" --iterations $((20000 / scale)) | tee -a "$tmp.acct"
fi
callgrind_limits() { # instructions per request, whole switchyard process: no limits, limits, limits and a budget, a memory-tier cache hit
  stop_pidfile "$RUN_DIR/bench-switchyard.pid" switchyard
  local dir pid n=$((1000 / scale)) cg_conf="$STATE_DIR/bench-callgrind.toml"
  dir=$(mktemp -d)
  # The bench's config with 1,000 cache entries in memory: requests without
  # the cache header never look at them.
  cp "$conf" "$cg_conf" && printf 'memory_entries = 1000\n' >>"$cg_conf"
  # Counting starts after startup (callgrind_control -i on below): uncounted,
  # the start-up (password hashing of every PostgreSQL connection among it)
  # runs several times faster under valgrind and keeps inside its time-outs.
  SWITCHYARD_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/cg.%p" \
    "${SWITCHYARD_BIN:-$TARGET/release/switchyard}" --config "$cg_conf" all >"$LOG_DIR/bench-callgrind.log" 2>&1 &
  pid=$!
  echo "$pid" >"$RUN_DIR/bench-switchyard.pid"
  wait_http http://127.0.0.1:18080/readyz 300 || { grep -v '^==' "$LOG_DIR/bench-callgrind.log" | tail -5 >&2; exit 1; }
  callgrind_control -i on "$pid" >/dev/null 2>&1
  local round
  for round in tenant limited budgeted memory-hit tenant limited budgeted memory-hit; do
    local args=()
    case $round in
      tenant) args=(--key "$tenant_key") ;;
      limited) args=(--key "$limited_key") ;;
      budgeted) args=(--key "$budgeted_key") ;;
      memory-hit) args=(--key "$tenant_key" --header "x-switchyard-cache: use") ;;
    esac
    # Warm up until every request of a warm-up is answered: a budgeted key
    # is refused (503) until a reconciliation round has marked its org's
    # budgets restored, which the process started under valgrind does first
    # (slowly), unless the one before it did.
    local line tries=0
    until line=$("$TARGET/release/sy-bench" --label warm --url "$via" --concurrency 1 --requests 100 --warmup 0 "${args[@]}") &&
      [[ $line == *'"errors":0,'* ]]; do
      if ((++tries == 30)); then
        echo "callgrind round $round: the warm-up still had errors after 30 tries: $line" >&2
        grep -v '^==' "$LOG_DIR/bench-callgrind.log" | tail -5 >&2
        exit 1
      fi
      sleep 2
    done
    callgrind_control -z "$pid" >/dev/null 2>&1
    line=$("$TARGET/release/sy-bench" --label "callgrind-$round" --url "$via" --concurrency 1 --requests "$n" --warmup 0 "${args[@]}")
    # A round with refused requests would count the refusals' cost.
    if [[ $line != *'"errors":0,'* ]]; then
      echo "callgrind round $round had errors: $line" >&2
      grep -v '^==' "$LOG_DIR/bench-callgrind.log" | tail -5 >&2
      exit 1
    fi
    callgrind_control -d "$pid" >/dev/null 2>&1
  done
  stop_pidfile "$RUN_DIR/bench-switchyard.pid" switchyard
  if [[ -n ${CALLGRIND_KEEP:-} ]]; then mkdir -p "$CALLGRIND_KEEP" && cp "$dir"/cg.* "$CALLGRIND_KEEP"/; fi
  python3 - "$dir" "$n" <<'PY'
import glob, json, re, subprocess, sys
d, n = sys.argv[1], int(sys.argv[2])
def total(f):
    out = subprocess.run(["callgrind_annotate", f], capture_output=True, text=True).stdout
    return int(re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", out).group(1).replace(",", ""))
parts = sorted(glob.glob(d + "/cg.*.[0-9]*"), key=lambda f: int(f.rsplit(".", 1)[1]))[-8:]
per = [total(f) / n for f in parts]
print(json.dumps({"label": "callgrind", "requests": n,
                  "runs_without_limits": [round(per[0]), round(per[4])],
                  "runs_limited": [round(per[1]), round(per[5])],
                  "runs_budgeted": [round(per[2]), round(per[6])],
                  "runs_memory_hit": [round(per[3]), round(per[7])],
                  "instructions_per_request_without_limits": round((per[0] + per[4]) / 2),
                  "instructions_per_request_limited": round((per[1] + per[5]) / 2),
                  "instructions_per_request_budgeted": round((per[2] + per[6]) / 2),
                  "instructions_per_request_memory_hit": round((per[3] + per[7]) / 2),
                  "added": round((per[1] + per[5] - per[0] - per[4]) / 2)}))
PY
  rm -rf "$dir"
}
if ((limit_rows)) && [[ -n ${CALLGRIND:-} ]]; then
  say "Instructions per request, without limits and limited (callgrind)"
  callgrind_limits | tee -a "$tmp.acct"
  if ((all)); then
    SWITCHYARD_LOG=warn "${SWITCHYARD_BIN:-$TARGET/release/switchyard}" --config "$conf" all >"$LOG_DIR/bench-switchyard.log" 2>&1 &
    echo $! >"$RUN_DIR/bench-switchyard.pid"
    wait_http http://127.0.0.1:18080/readyz 30
  fi
fi
if ((cache_rows)); then
  # The same config with 1,000 entries in each ingress's memory, on 18083.
  mem_conf="$STATE_DIR/bench-memcache.toml"
  sed -e 's/^listen = "127.0.0.1:18080"/listen = "127.0.0.1:18083"/' \
    -e 's/^namespace = "bench"/namespace = "bench-memcache"/' "$conf" >"$mem_conf"
  printf 'memory_entries = 1000\n' >>"$mem_conf"
  SWITCHYARD_LOG=warn "${SWITCHYARD_BIN:-$TARGET/release/switchyard}" --config "$mem_conf" all >"$LOG_DIR/bench-memcache.log" 2>&1 &
  echo $! >"$RUN_DIR/bench-memcache.pid"
  wait_http http://127.0.0.1:18083/readyz 30 || { tail -20 "$LOG_DIR/bench-memcache.log" >&2; exit 1; }
  mem=http://127.0.0.1:18083/v1/chat/completions
  hit=(--key "$tenant_key" --header "x-switchyard-cache: use")
  miss=(--key "$tenant_key" --header "x-switchyard-cache: use, max-age=0")
  if [[ -n ${CACHE_MEMORY_ONLY:-} ]]; then
    say "Response cache: memory-tier hits against the direct call, interleaved"
    for _ in 1 2 3 4; do
      run direct "$direct" 1 3000 300
      run cache-hit-memory "$mem" 1 3000 300 "${hit[@]}"
    done
  else
  say "Response cache: hits (Redis, memory) against the direct call; a miss (looked up, too old, called, stored) against no cache"
  for _ in 1 2; do
    run direct "$direct" 1 3000 300
    run cache-hit "$via" 1 3000 300 "${hit[@]}"
    run direct "$direct" 1 3000 300
    run cache-hit-memory "$mem" 1 3000 300 "${hit[@]}"
    run tenant-key "$via" 1 3000 300 --key "$tenant_key"
    run cache-miss "$via" 1 3000 300 "${miss[@]}"
  done
  for _ in 1 2; do
    run direct "$direct" 1 2000 200 --stream
    run cache-hit "$via" 1 2000 200 --stream "${hit[@]}"
  done
  for _ in 1 2; do
    run direct "$direct" 64 20000 2000
    run cache-hit "$via" 64 20000 2000 "${hit[@]}"
    run tenant-key "$via" 64 20000 2000 --key "$tenant_key"
    run cache-miss "$via" 64 20000 2000 "${miss[@]}"
  done
  fi
  # One Redis round trip from a client on this machine, for the miss's bar.
  redis-benchmark -p 6379 -t get -n $((20000 / scale)) -c 1 --csv 2>/dev/null | python3 -c '
import csv, json, sys
rows = list(csv.DictReader(sys.stdin))
r = rows[-1]
print(json.dumps({"label": "redis-round-trip", "p50_ms": float(r["p50_latency_ms"]), "p99_ms": float(r["p99_latency_ms"])}))' | tee -a "$tmp.acct"
  stop_pidfile "$RUN_DIR/bench-memcache.pid" switchyard
fi
if ((tracing)); then
  # The same config in a namespace of its own, on 18082, with every span
  # exported to the mock (which counts and discards them).
  traced_conf="$STATE_DIR/bench-traced.toml"
  sed -e 's/^listen = "127.0.0.1:18080"/listen = "127.0.0.1:18082"/' \
    -e 's/^namespace = "bench"/namespace = "bench-traced"/' "$conf" >"$traced_conf"
  printf '\n[tracing]\nenabled = true\nendpoint = "http://127.0.0.1:18081/v1/traces"\n' >>"$traced_conf"
  SWITCHYARD_LOG=warn "${SWITCHYARD_BIN:-$TARGET/release/switchyard}" --config "$traced_conf" all >"$LOG_DIR/bench-traced.log" 2>&1 &
  echo $! >"$RUN_DIR/bench-traced.pid"
  wait_http http://127.0.0.1:18082/readyz 30 || { tail -20 "$LOG_DIR/bench-traced.log" >&2; exit 1; }
  traced=http://127.0.0.1:18082/v1/chat/completions
  say "Tracing: off (switchyard) and on, exporting every span (traced), interleaved"
  exports_before=$(curl -s http://127.0.0.1:18081/mock/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["trace_exports"])')
  for _ in 1 2; do
    run switchyard "$via" 1 3000 300
    run traced "$traced" 1 3000 300
  done
  for _ in 1 2; do
    run switchyard "$via" 64 20000 2000
    run traced "$traced" 64 20000 2000
  done
  run switchyard "$via" 1 2000 200 --stream
  run traced "$traced" 1 2000 200 --stream
  sleep 6 # the batch processor's last export
  exports_after=$(curl -s http://127.0.0.1:18081/mock/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["trace_exports"])')
  echo "{\"label\": \"trace-exports\", \"exports\": $((exports_after - exports_before))}" | tee -a "$tmp.acct"
  stop_pidfile "$RUN_DIR/bench-traced.pid" switchyard
fi
if ((all)); then
say "Streamed, concurrency 1"
run direct "$direct" 1 2000 200 --stream
run switchyard "$via" 1 2000 200 --stream
say "Streamed, concurrency 64"
run direct "$direct" 64 10000 1000 --stream
run switchyard "$via" 64 10000 1000 --stream

say "Translation, concurrency 1: Anthropic client to an Anthropic target, and to an OpenAI target"
amsg=http://127.0.0.1:18081/v1/messages
vmsg=http://127.0.0.1:18080/v1/messages
run direct-anthropic "$amsg" 1 3000 300 --api messages --model claude-bench
run messages-to-anthropic "$vmsg" 1 3000 300 --api messages --model claude-bench
run direct-anthropic "$amsg" 1 2000 200 --api messages --model claude-bench --stream
run messages-to-anthropic "$vmsg" 1 2000 200 --api messages --model claude-bench --stream
run direct "$direct" 1 3000 300
run messages-to-openai "$vmsg" 1 3000 300 --api messages
run direct "$direct" 1 2000 200 --stream
run messages-to-openai "$vmsg" 1 2000 200 --api messages --stream

say "Authentication from memory: cost per lookup (in-process, 100,000 keys)"
"$TARGET/release/sy-auth-bench" --iterations $((200000 / scale)) | tee -a "$tmp.acct"

say "Classifier: cost per prompt (in-process)"
"$TARGET/release/sy-classifier-bench" --iterations $((20000 / scale)) | tee -a "$tmp.acct"

say "Accounting: throughput, lag at 1,000 events/s, token estimate cost"
"$TARGET/release/sy-accounting-bench" --events $((200000 / scale)) --seconds $((10 / scale + 1)) 2>/dev/null | tee -a "$tmp.acct"
fi

{
  echo "{\"machine\": \"$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)\", \"date\": \"$(date -u +%FT%TZ)\", \"commit\": \"$(git rev-parse --short HEAD 2>/dev/null || echo none)\", \"binary\": \"${SWITCHYARD_BIN:-release}\", \"note\": \"${NOTE:-}\"}"
  cat "$tmp" "$tmp.acct"
} >>"$out"
python3 - "$tmp" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print()
print("| path | mode | conc | direct p50 | via p50 | added p50 | direct p99 | via p99 | added p99 | direct rps | via rps | errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for d, v in zip(rows[0::2], rows[1::2]):
    key = "ttft_p" if d["stream"] else "p"
    mode = "stream (TTFT)" if d["stream"] else "non-stream"
    path = v["label"] if v["label"] != "switchyard" else "chat-to-openai"
    num = lambda x: float("nan") if x is None else x
    p50d, p50v = num(d[key + "50_ms"]), num(v[key + "50_ms"])
    p99d, p99v = num(d[key + "99_ms"]), num(v[key + "99_ms"])
    print(f"| {path} | {mode} | {d['concurrency']} | {p50d:.3f} | {p50v:.3f} | {p50v - p50d:+.3f} | {p99d:.3f} | {p99v:.3f} | {p99v - p99d:+.3f} | {d['rps']:.0f} | {v['rps']:.0f} | {d['errors']}/{v['errors']} |")
PY
python3 - "$tmp" "$tmp.acct" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
extra = [json.loads(l) for l in open(sys.argv[2])] if __import__("os").path.exists(sys.argv[2]) else []
hops = {h["concurrency"]: h for h in extra if h.get("mode") == "hop"}
if hops:
    print()
    print("Against the bare JetStream hop (issue 23's goals: added p50 <= 1.25x the hop's, p99 <= 1.5x; rps >= 25 % of the hop's at c=64):")
    print()
    print("| row | conc | hop p50 | added p50 | ratio | hop p99 | added p99 | ratio | hop rps | switchyard rps | share |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for d, v in zip(rows[0::2], rows[1::2]):
        h = hops.get(d["concurrency"])
        if h is None or v["label"] not in ("switchyard", "all-on", "all-on-idle", "auto"):
            continue
        # Streamed: the added time to the first token against the hop.
        key, label = ("ttft_p", v["label"] + " (stream, TTFT)") if d["stream"] else ("p", v["label"])
        if d.get(key + "50_ms") is None or v.get(key + "50_ms") is None:
            continue
        a50, a99 = v[key + "50_ms"] - d[key + "50_ms"], v[key + "99_ms"] - d[key + "99_ms"]
        print(f"| {label} | {d['concurrency']} | {h['p50_ms']:.3f} | {a50:+.3f} | {a50 / h['p50_ms']:.2f}x | {h['p99_ms']:.3f} | {a99:+.3f} | {a99 / h['p99_ms']:.2f}x | {h['rps']:.0f} | {v['rps']:.0f} | {100 * v['rps'] / h['rps']:.1f} % |")
PY
python3 - "$tmp.acct" <<'PY'
import json, os, sys
if not os.path.exists(sys.argv[1]):
    sys.exit()
for row in (json.loads(l) for l in open(sys.argv[1])):
    if "stages" not in row:
        continue
    print()
    idle = ", 5 ms between requests" if row["label"].endswith("-idle") else ""
    print(f"Where the time goes (every feature on, concurrency {row['concurrency']}{idle}, {row['requests']} requests; "
          f"client p50 {row['p50_ms']:.3f} ms; `ack` lies within `queue`, `total` is the ingress's):")
    print()
    print("| stage | p50 ms | mean ms |")
    print("|---|---|---|")
    for s in row["stages"]:
        print(f"| {s['stage']} | {s['p50_ms']:.3f} | {s['mean_ms']:.3f} |")
PY
python3 - "$tmp.acct" <<'PY'
import json, os, sys
if not os.path.exists(sys.argv[1]):
    sys.exit()
for row in (json.loads(l) for l in open(sys.argv[1])):
    if not row.get("label", "").endswith("-rss"):
        continue
    procs = ", ".join(f"{name} {p['rss_mb']:.0f} MB (peak {p['peak_mb']:.0f})"
                      for name, ps in sorted(row.items()) if name != "label" for p in ps)
    print(f"\nMemory after the {row['label'][:-4]} rows: {procs}")
PY
rm -f "$tmp" "$tmp.acct"
echo "Raw results appended to $out" >&2
