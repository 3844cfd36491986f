#!/usr/bin/env bash
# Stops exactly what deploy/local/up.sh started (by the pids it recorded), and
# nothing else.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../../scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"
stop_pidfile "$RUN_DIR/switchyard.pid" switchyard
for name in openai anthropic gemini cohere vllm; do
  stop_pidfile "$RUN_DIR/mock-$name.pid" mock-provider
done
stop_nats
stop_clickhouse
stop_postgres
stop_redis
say "Stopped what deploy/local/up.sh started."
