#!/usr/bin/env bash
# Brings up the whole local stack: NATS (JetStream), ClickHouse (usage rows),
# PostgreSQL (tenants and keys), Redis (rate limits),
# mock providers `openai`, `anthropic`, `gemini`, `cohere` and `vllm` on 8081-8085, and `switchyard all`
# (ingress, workers, accounting) on 8080, then prints a curl example. Idempotent: whatever already answers is left alone; only what
# this script starts is recorded for deploy/local/down.sh to stop.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=../../scripts/lib/services.sh
source "$ROOT/scripts/lib/services.sh"
CONFIG="$ROOT/deploy/local/switchyard.toml"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

ensure_nats
ensure_clickhouse
ensure_postgres
ensure_redis

say "Building Switchyard (release)"
cargo build --release --locked --bin switchyard --bin mock-provider

say "Applying the ClickHouse and PostgreSQL migrations"
"$TARGET/release/switchyard" --config "$CONFIG" migrate

# One mock instance per provider entry (every instance speaks every dialect; the
# entry's kind decides which one is used): openai 8081, anthropic 8082, gemini 8083,
# cohere 8084, vllm 8085.
for entry in openai:8081 anthropic:8082 gemini:8083 cohere:8084 vllm:8085; do
  name=${entry%%:*}
  port=${entry##*:}
  if curl -sf -o /dev/null "http://127.0.0.1:$port/healthz"; then
    say "Mock provider '$name' already answers on $port"
  else
    say "Starting the mock provider '$name' on 127.0.0.1:$port"
    "$TARGET/release/mock-provider" --name "$name" --listen "127.0.0.1:$port" >>"$LOG_DIR/mock-$name.log" 2>&1 &
    echo $! >"$RUN_DIR/mock-$name.pid"
    wait_http "http://127.0.0.1:$port/healthz" 20 || { tail -20 "$LOG_DIR/mock-$name.log" >&2; exit 1; }
  fi
done

if curl -sf -o /dev/null http://127.0.0.1:8080/readyz; then
  say "Switchyard already answers on 8080"
else
  say "Starting switchyard all on 127.0.0.1:8080"
  "$TARGET/release/switchyard" --config "$CONFIG" all >>"$LOG_DIR/switchyard.log" 2>&1 &
  echo $! >"$RUN_DIR/switchyard.pid"
  if ! wait_http http://127.0.0.1:8080/readyz 60; then
    echo "switchyard did not become ready; the end of its log:" >&2
    tail -30 "$LOG_DIR/switchyard.log" >&2
    exit 1
  fi
fi

cat <<'MSG'

Switchyard is up on http://127.0.0.1:8080 (logs in .local/log/).

  curl -s http://127.0.0.1:8080/v1/chat/completions \
    -H 'Authorization: Bearer sk-sy-local-dev' -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}]}'

Streamed:

  curl -sN http://127.0.0.1:8080/v1/chat/completions \
    -H 'Authorization: Bearer sk-sy-local-dev' -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hello!"}]}'

The same from an Anthropic client, served by the OpenAI-dialect target (and any
client API reaches any dialect: claude-sonnet-4-5 is served by the Anthropic
mock, gemini-2.5-flash by the Gemini one, command-r-plus by the Cohere one):

  curl -s http://127.0.0.1:8080/v1/messages \
    -H 'x-api-key: sk-sy-local-dev' -H 'anthropic-version: 2023-06-01' -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4o-mini","max_tokens":100,"messages":[{"role":"user","content":"Hello!"}]}'

  curl -s http://127.0.0.1:8080/v1/chat/completions \
    -H 'Authorization: Bearer sk-sy-local-dev' -H 'Content-Type: application/json' \
    -d '{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"Hello!"}]}'

Every call is a row in ClickHouse (database switchyard) within a second or so:

  clickhouse-client --query "SELECT ts, model, provider, status, input_tokens, output_tokens, cost, latency_ms
    FROM switchyard.requests FINAL ORDER BY ts DESC LIMIT 10"

Faults from the mock: put e.g. [[mock:status=429,retry_after=2]] or [[mock:tokens=50,delay_ms=20]]
in the message. gpt-4o-mini falls back openai -> anthropic -> vllm; watch it happen
(x-switchyard-provider: anthropic, x-switchyard-attempts: 4 after openai's retries):

  curl -si http://127.0.0.1:8080/v1/chat/completions \
    -H 'Authorization: Bearer sk-sy-local-dev' -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi [[mock:status=500,only=openai]]"}]}'

The response cache (docs/cache.md): the same request again is answered from Redis,
byte for byte, with no provider call (x-switchyard-cache: miss, then hit):

  for i in 1 2; do curl -si http://127.0.0.1:8080/v1/chat/completions \
    -H 'Authorization: Bearer sk-sy-local-dev' -H 'x-switchyard-cache: use' -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"Cache me"}]}' | grep -i '^x-switchyard-cache'; done

A pipeline (docs/pipelines.md): draft on Cohere, critique on Anthropic, rewrite on OpenAI,
streamed; x-switchyard-pipeline-run names the run, GET /v1/pipelines/runs/<id> shows its steps:

  curl -si http://127.0.0.1:8080/v1/chat/completions \
    -H 'Authorization: Bearer sk-sy-local-dev' -H 'Content-Type: application/json' \
    -d '{"model":"pipeline:blog","stream":true,"messages":[{"role":"user","content":"tides"}]}'

Rerank (Cohere's and Jina's API; rerank-v3.5 falls back to a vLLM reranker, as
[[mock:status=500,only=cohere]] in the query shows; GET /v1/models lists what each model serves):

  curl -s http://127.0.0.1:8080/v1/rerank \
    -H 'Authorization: Bearer sk-sy-local-dev' -H 'Content-Type: application/json' \
    -d '{"model":"rerank-v3.5","query":"tide tables","top_n":2,"return_documents":true,
         "documents":["tide tables for the harbour","a recipe for bread","when the tide turns"]}'

An image (OpenAI's images API; the base64 PNG is in data[0].b64_json, or ask
"response_format":"url" for a link; large images travel through JetStream's object store):

  curl -s http://127.0.0.1:8080/v1/images/generations \
    -H 'Authorization: Bearer sk-sy-local-dev' -H 'Content-Type: application/json' \
    -d '{"model":"gpt-image-1","prompt":"a lighthouse at dusk","size":"64x64"}' | head -c 300; echo

A transcription (a multipart upload; any WAV or MP3 will do, the mock makes up the words;
this makes two seconds of silence):

  python3 -c 'import wave; w = wave.open("/tmp/hello.wav", "wb"); w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000); w.writeframes(bytes(64000)); w.close()'
  curl -s http://127.0.0.1:8080/v1/audio/transcriptions \
    -H 'Authorization: Bearer sk-sy-local-dev' \
    -F model=whisper-1 -F response_format=srt -F file=@/tmp/hello.wav

Speech, streamed as it is made (an MP3 the mock makes up):

  curl -s http://127.0.0.1:8080/v1/audio/speech -o /tmp/hello.mp3 \
    -H 'Authorization: Bearer sk-sy-local-dev' -H 'Content-Type: application/json' \
    -d '{"model":"tts-1","voice":"alloy","input":"The tide turns at noon."}'

A batch, from the repository root (OpenAI's Batches API; the openai SDK works too):

  for i in 1 2 3; do echo '{"custom_id":"q'$i'","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Question '$i'"}]}}'; done > /tmp/batch.jsonl
  SWITCHYARD_API_KEY=sk-sy-local-dev target/release/switchyard batch submit /tmp/batch.jsonl --wait

Tenants (orgs -> projects -> API keys, docs/tenancy.md) through the admin API,
with the local owner token (a development token: docs/admin-api.md):

  export SWITCHYARD_ADMIN_TOKEN=sk-sy-admin-local-dev
  sy=target/release/switchyard
  org=$($sy admin orgs create Acme --json | jq -r .id)
  project=$($sy admin projects create --org "$org" web --json | jq -r .id)
  $sy admin keys create --project "$project" --model gpt-4o-mini prod   # prints the key once
  $sy admin keys list
  curl -s http://127.0.0.1:8080/admin/v1/audit -H "Authorization: Bearer $SWITCHYARD_ADMIN_TOKEN"

The operator console (docs/console.md), in a browser: http://127.0.0.1:8080/console
(sign in with sk-sy-admin-local-dev).

 Stop everything this script started with: deploy/local/down.sh
MSG
