# Shared by the bench scripts (source it first): the repository root as the
# working directory, the services library, the target dir, and the steps every
# bench takes around its own switchyard (18080) and mock (18081).
# shellcheck shell=bash
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export SY_STATE_DIR="${SY_STATE_DIR:-$ROOT/.local/bench}"
# shellcheck source=../scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

# Exits when something already listens on the bench's ports.
bench_ports_free() {
  for port in 18080 18081 18082 18083; do
    if port_open "$port"; then echo "port $port is in use; stop what runs there first" >&2; exit 1; fi
  done
}

# Starts the OpenAI-dialect mock on 18081 (no artificial delay).
start_bench_mock() {
  "$TARGET/release/mock-provider" --name openai --listen 127.0.0.1:18081 >"$LOG_DIR/bench-mock.log" 2>&1 &
  echo $! >"$RUN_DIR/bench-mock.pid"
}

# Stops the bench's switchyard and mock.
stop_bench_processes() {
  stop_pidfile "$RUN_DIR/bench-switchyard.pid" switchyard
  stop_pidfile "$RUN_DIR/bench-traced.pid" switchyard
  stop_pidfile "$RUN_DIR/bench-memcache.pid" switchyard
  stop_pidfile "$RUN_DIR/bench-mock.pid" mock-provider
}
