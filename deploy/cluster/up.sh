#!/usr/bin/env bash
# Brings up Switchyard as a cluster on this one machine, with loopback
# addresses: a three-node NATS JetStream cluster (client ports 14222-14224,
# routes 16222-16224, monitoring 18222-18224), two ingresses (8090, 8091),
# two workers for each of two providers, two accounting consumers, the mock
# providers `openai` (18191) and `anthropic` (18192), and ClickHouse and
# Redis (started when missing, as deploy/local does). Every Switchyard
# process runs the same binary with deploy/cluster/switchyard.toml; only its
# addresses come from the environment. deploy/cluster/down.sh stops exactly
# what this started. tests/e2e/cluster.rs runs the same topology under load
# and kills a NATS node and an ingress (docs/reliability.md "A cluster").
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=../../scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"
CONFIG="$ROOT/deploy/cluster/switchyard.toml"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

ensure_venv
ensure_clickhouse
ensure_redis

say "Building Switchyard (release)"
cargo build --release --locked --bin switchyard --bin mock-provider

# The NATS nodes: n1..n3, each routing to the other two.
for i in 1 2 3; do
  port=$((14221 + i))
  if port_open "$port"; then
    say "NATS node n$i already answers on $port"
    continue
  fi
  routes=""
  for j in 1 2 3; do
    if ((j != i)); then routes+="\"nats-route://127.0.0.1:$((16221 + j))\", "; fi
  done
  mkdir -p "$STATE_DIR/cluster/n$i"
  cat >"$STATE_DIR/cluster/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:$port
http: 127.0.0.1:$((18221 + i))
max_payload: 8MB
jetstream { store_dir: "$STATE_DIR/cluster/n$i", max_file_store: 1GB, max_memory_store: 128MB }
cluster { name: switchyard, listen: 127.0.0.1:$((16221 + i)), routes: [${routes%, }] }
CONF
  say "Starting NATS node n$i on $port"
  "$VENV/bin/nats-server" -c "$STATE_DIR/cluster/n$i.conf" >>"$LOG_DIR/cluster-nats-n$i.log" 2>&1 &
  echo $! >"$RUN_DIR/cluster-nats-n$i.pid"
done
say "Waiting for the JetStream meta leader"
for _ in $(seq 150); do
  if curl -sf http://127.0.0.1:18222/jsz | grep -q '"leader": *"n'; then break; fi
  sleep 0.2
done

for entry in openai:18191 anthropic:18192; do
  name=${entry%%:*}
  port=${entry##*:}
  if ! curl -sf -o /dev/null "http://127.0.0.1:$port/healthz"; then
    say "Starting the mock provider '$name' on $port"
    "$TARGET/release/mock-provider" --name "$name" --listen "127.0.0.1:$port" >>"$LOG_DIR/cluster-mock-$name.log" 2>&1 &
    echo $! >"$RUN_DIR/cluster-mock-$name.pid"
  fi
done

say "Applying the ClickHouse migrations"
"$TARGET/release/switchyard" --config "$CONFIG" migrate

# name, subcommand, the listen and metrics addresses.
start() {
  local name=$1 listen=$2 metrics=$3
  shift 3
  if pid_alive "$RUN_DIR/cluster-$name.pid" switchyard; then
    say "$name already runs"
    return
  fi
  say "Starting $name"
  SY_LISTEN=$listen SY_METRICS_LISTEN=$metrics \
    "$TARGET/release/switchyard" --config "$CONFIG" "$@" >>"$LOG_DIR/cluster-$name.log" 2>&1 &
  echo $! >"$RUN_DIR/cluster-$name.pid"
}
start ingress-1 127.0.0.1:8090 127.0.0.1:9470 ingress
start ingress-2 127.0.0.1:8091 127.0.0.1:9471 ingress --no-dispatcher
start worker-openai-1 127.0.0.1:0 127.0.0.1:9472 worker --providers openai
start worker-openai-2 127.0.0.1:0 127.0.0.1:9473 worker --providers openai
start worker-anthropic-1 127.0.0.1:0 127.0.0.1:9474 worker --providers anthropic
start worker-anthropic-2 127.0.0.1:0 127.0.0.1:9475 worker --providers anthropic
start accounting-1 127.0.0.1:0 127.0.0.1:9476 accounting
start accounting-2 127.0.0.1:0 127.0.0.1:9477 accounting
for port in 8090 8091; do
  wait_http "http://127.0.0.1:$port/readyz" 60 || { tail -30 "$LOG_DIR"/cluster-ingress-*.log >&2; exit 1; }
done

cat <<'MSG'

The cluster is up: ingresses on http://127.0.0.1:8090 and :8091 (logs in .local/log/cluster-*).

  curl -s http://127.0.0.1:8091/v1/chat/completions \
    -H 'Authorization: Bearer sk-sy-cluster-dev' -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}]}'

Kill a NATS node (kill -9 "$(cat .local/run/cluster-nats-n2.pid)") and the
same request still answers; deploy/cluster/down.sh stops it all.
MSG
