#!/usr/bin/env bash
# Stops exactly what deploy/cluster/up.sh started (by the pids it recorded).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../../scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"
for name in ingress-1 ingress-2 worker-openai-1 worker-openai-2 worker-anthropic-1 worker-anthropic-2 accounting-1 accounting-2; do
  stop_pidfile "$RUN_DIR/cluster-$name.pid" switchyard
done
for name in openai anthropic; do
  stop_pidfile "$RUN_DIR/cluster-mock-$name.pid" mock-provider
done
for i in 1 2 3; do
  stop_pidfile "$RUN_DIR/cluster-nats-n$i.pid" nats-server
done
stop_clickhouse
stop_redis
say "Stopped what deploy/cluster/up.sh started."
