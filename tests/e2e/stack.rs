//! Starts a whole stack per test: a mock provider in-process, `switchyard all`
//! as a child process on a free port, in a namespace of its own.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sy_mock_provider::{MockOptions, MockProvider};
use sy_test_support as support;

pub const KEY: &str = "sk-sy-test-key-1";
/// A second tenant's key.
pub const OTHER_KEY: &str = "sk-sy-test-key-2";

pub struct StackOptions {
    pub nats_url: String,
    pub request_timeout: &'static str,
    pub max_body_bytes: u64,
    pub mock_defaults: &'static str,
    pub ack_wait: &'static str,
    /// Run accounting into a fresh ClickHouse database (migrated first).
    pub clickhouse: bool,
    /// The ClickHouse to use (default: the shared one).
    pub clickhouse_url: Option<String>,
    /// Retries per target (0 by default, so that an injected error reaches the
    /// client at once; resilience tests raise it).
    pub retries: u32,
    /// Streamed calls' first-token and idle limits, and the limit for calls
    /// that are not streamed.
    pub ttft_timeout: &'static str,
    pub response_timeout: &'static str,
    /// 0: `switchyard all` in one process. N: `switchyard ingress` (with
    /// `accounting` beside it when ClickHouse is on) and N `switchyard worker`
    /// processes, which a test may kill.
    pub split_workers: usize,
    /// Run the batch dispatcher as a process of its own (`switchyard
    /// dispatcher`, the ingress with `--no-dispatcher`), which a test may kill.
    pub split_dispatcher: bool,
    /// `[batch] window`: items of one batch in flight at most.
    pub batch_window: u32,
    /// More `[batch]` lines (e.g. `max_running_per_key = 1`).
    pub batch_extra: &'static str,
    /// More `[server]` lines (e.g. `max_connections = 3`).
    pub server_extra: &'static str,
    /// More `[providers.openai]` lines (e.g. `header_timeout = "3s"`).
    pub openai_extra: &'static str,
    /// Whole sections appended to the config (e.g. `[postgres]` and `[tenants]`).
    pub sections: String,
    /// The key the `openai` mock requires (none: any).
    pub openai_mock_key: Option<&'static str>,
    /// `SWITCHYARD_LOG` of the switchyard processes.
    pub log: &'static str,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            nats_url: support::nats_url(),
            request_timeout: "30s",
            max_body_bytes: 65536,
            mock_defaults: "",
            ack_wait: "30s",
            clickhouse: false,
            clickhouse_url: None,
            retries: 0,
            ttft_timeout: "10s",
            response_timeout: "60s",
            split_workers: 0,
            split_dispatcher: false,
            batch_window: 64,
            batch_extra: "",
            server_extra: "",
            openai_extra: "",
            sections: String::new(),
            openai_mock_key: None,
            log: "warn",
        }
    }
}

pub struct Stack {
    /// The `openai` provider (OpenAI dialect).
    pub mock: MockProvider,
    /// The `anthropic`, `gemini`, `cohere` and `vllm` (OpenAI dialect)
    /// providers, each its own mock.
    pub dialect_mocks: Vec<(&'static str, MockProvider)>,
    /// The ClickHouse database of this stack, when accounting runs.
    pub clickhouse: Option<sy_config::ClickhouseConfig>,
    pub base: String,
    pub namespace: String,
    pub http: reqwest::Client,
    /// The config file `switchyard all` runs with.
    pub config_text: String,
    pub config_path: std::path::PathBuf,
    nats_url: String,
    child: Option<Child>,
    /// Worker processes (split stacks), by index; `None` once reaped.
    workers: std::sync::Mutex<Vec<Option<Child>>>,
    dispatcher: std::sync::Mutex<Option<Child>>,
    /// The accounting process of a split stack.
    others: Vec<Child>,
    /// `SWITCHYARD_LOG` of its processes.
    log: &'static str,
    _dir: tempfile::TempDir,
}

/// Starts `switchyard --config PATH <args>` with warnings logged to a pipe.
fn switchyard(path: &std::path::Path, args: &[&str], log: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(path)
        .args(args)
        .env("SWITCHYARD_LOG", log)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting switchyard")
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_with(StackOptions::default()).await
    }

    pub async fn start_with(opts: StackOptions) -> Stack {
        let mock = {
            let mock = MockOptions::new("openai").with_defaults(opts.mock_defaults);
            let mock = match opts.openai_mock_key {
                Some(k) => mock.with_api_key(k),
                None => mock,
            };
            MockProvider::start(mock)
                .await
                .expect("starting the mock provider")
        };
        let mut dialect_mocks = Vec::new();
        for name in ["anthropic", "gemini", "cohere", "vllm"] {
            let m = MockProvider::start(MockOptions::new(name).with_defaults(opts.mock_defaults))
                .await
                .expect("starting a mock provider");
            dialect_mocks.push((name, m));
        }
        let namespace = support::unique_namespace();
        let port = support::free_port();
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
max_body_bytes = {max_body}
request_timeout = "{timeout}"
{server_extra}

[nats]
url = "{nats}"
namespace = "{namespace}"
publish_timeout = "1s"
ack_wait = "{ack_wait}"

[[keys]]
name = "test"
key = "{KEY}"

[[keys]]
name = "other"
key = "{OTHER_KEY}"

[providers.openai]
retries = {retries}
ttft_timeout = "{ttft}"
idle_timeout = "{ttft}"
response_timeout = "{response}"
kind = "openai_compatible"
base_url = "{base}"
{openai_extra}

[providers.openai.prices."text-embedding-3-small"]
input = "0.02"
output = "0"

[providers.openai.prices."gpt-4o-mini"]
input = "0.15"
cached_input = "0.075"
output = "0.60"

[providers.anthropic]
retries = {retries}
ttft_timeout = "{ttft}"
idle_timeout = "{ttft}"
response_timeout = "{response}"
kind = "anthropic"
base_url = "{anthropic}"

[providers.anthropic.prices."claude-sonnet-4-5"]
input = "3"
cached_input = "0.3"
cache_write = "3.75"
output = "15"

[providers.gemini]
retries = {retries}
ttft_timeout = "{ttft}"
idle_timeout = "{ttft}"
response_timeout = "{response}"
kind = "gemini"
base_url = "{gemini}"

[providers.cohere]
retries = {retries}
ttft_timeout = "{ttft}"
idle_timeout = "{ttft}"
response_timeout = "{response}"
kind = "cohere"
base_url = "{cohere}"
max_concurrency = 2
max_queue = 3

[providers.vllm]
retries = {retries}
ttft_timeout = "{ttft}"
idle_timeout = "{ttft}"
response_timeout = "{response}"
kind = "vllm"
base_url = "{vllm}"

[providers.vllm.models."llama-3.1-8b"]
context_window = 8192

[health]
failure_threshold = 3
cool_down = "2s"

[batch]
max_file_bytes = 2000000
max_lines = 2000
window = {batch_window}
max_rate = 1000
webhook_secret = "whsec-test"
{batch_extra}

[billing]
markup_percent = "20"

[providers.openai.models."gpt-4o-mini"]
context_window = 128000
serves = ["chat"]
quality = {{ simple = 0.9, medium = 0.7, complex = 0.4, code = 0.6, image = 0.5 }}

[providers.anthropic.models."claude-sonnet-4-5"]
context_window = 200000

[providers.openai.models."text-embedding-3-small"]
serves = ["embeddings"]

[providers.cohere.models."rerank-v3.5"]
serves = ["rerank"]

[providers.cohere.prices."rerank-v3.5"]
input = "0"
output = "0"
per_search_unit = "0.002"

[providers.vllm.models."bge-reranker-v2-m3"]
serves = ["rerank"]

[providers.openai.models."gpt-image-1"]
serves = ["images"]

[providers.openai.prices."gpt-image-1"]
input = "5"
output = "40"

[providers.vllm.models."flux-schnell"]
serves = ["images"]

[providers.vllm.prices."flux-schnell"]
input = "0"
output = "0"
per_output_image = "0.003"

[providers.gemini.models."gemini-2.5-flash-image"]
serves = ["images"]

[providers.openai.models."whisper-1"]
serves = ["transcriptions"]

[providers.openai.prices."whisper-1"]
input = "0"
output = "0"
per_audio_second = "0.0001"

[providers.vllm.models."whisper-large-v3"]
serves = ["transcriptions"]

[providers.vllm.prices."whisper-large-v3"]
input = "0"
output = "0"
per_audio_second = "0.00003"

[providers.openai.models."tts-1"]
serves = ["speech"]

[providers.openai.prices."tts-1"]
input = "0"
output = "0"
per_character = "0.000015"

[providers.vllm.models."kokoro"]
serves = ["speech"]

[providers.gemini.prices."gemini-2.5-flash-image"]
input = "0.30"
output = "30"

[providers.vllm.prices."bge-reranker-v2-m3"]
input = "0.02"
output = "0"

[routers.auto]
strategy = "balanced"

# Requests tagged tier=free (x-switchyard-tags or metadata) go to the cheap target.
[[routers.auto.routes]]
name = "free-tier"
tags = {{ tier = "free" }}
targets = [{{ provider = "openai", model = "gpt-4o-mini" }}]

[[routers.auto.routes]]
name = "code"
classes = ["code"]
strategy = "weighted"
targets = [{{ provider = "anthropic", model = "claude-sonnet-4-5", weight = 1 }}, {{ provider = "openai", model = "gpt-4o-mini", weight = 0 }}]

[[routers.auto.routes]]
name = "simple"
classes = ["simple"]
strategy = "cheapest"
targets = [{{ provider = "anthropic", model = "claude-sonnet-4-5" }}, {{ provider = "openai", model = "gpt-4o-mini" }}]

[[routers.auto.routes]]
name = "default"
targets = [{{ provider = "openai", model = "gpt-4o-mini" }}]

[routers."auto:canary"]
strategy = "weighted"

[[routers."auto:canary".routes]]
name = "all"
targets = [{{ provider = "openai", model = "gpt-4o-mini", weight = 90 }}, {{ provider = "gemini", model = "gemini-2.5-flash", weight = 10 }}]

[routers."auto:fast"]
strategy = "fastest"

[[routers."auto:fast".routes]]
name = "all"
targets = [{{ provider = "openai", model = "gpt-4o-mini" }}, {{ provider = "anthropic", model = "claude-sonnet-4-5" }}, {{ provider = "cohere", model = "command-r-plus" }}]

# Images, audio and rerank by router: each kind's route, cheapest first.
[routers."auto:media"]
strategy = "cheapest"

[[routers."auto:media".routes]]
name = "pictures"
kinds = ["images"]
targets = [{{ provider = "openai", model = "gpt-image-1" }}, {{ provider = "vllm", model = "flux-schnell" }}]

[[routers."auto:media".routes]]
name = "voice"
kinds = ["transcriptions", "speech"]
targets = [{{ provider = "openai", model = "whisper-1" }}, {{ provider = "vllm", model = "whisper-large-v3" }}, {{ provider = "openai", model = "tts-1" }}, {{ provider = "vllm", model = "kokoro" }}]

[[routers."auto:media".routes]]
name = "ranking"
kinds = ["rerank"]
targets = [{{ provider = "cohere", model = "rerank-v3.5" }}, {{ provider = "vllm", model = "bge-reranker-v2-m3" }}]

# The classic chain: OpenAI, then Anthropic, then a self-hosted vLLM.
[models."chain"]
targets = [{{ provider = "openai", model = "gpt-4o-mini" }}, {{ provider = "anthropic", model = "claude-sonnet-4-5" }}, {{ provider = "vllm", model = "llama-3.1-8b" }}]

# Gemini cannot continue a prefill: a cut stream is regenerated and spliced.
[models."chain-splice"]
targets = [{{ provider = "openai", model = "gpt-4o-mini" }}, {{ provider = "gemini", model = "gemini-2.5-flash" }}]

# Recovery off: a cut stream ends with an error.
[models."chain-strict"]
mid_stream = "error"
targets = [{{ provider = "openai", model = "gpt-4o-mini" }}, {{ provider = "anthropic", model = "claude-sonnet-4-5" }}]

# Refusals may fall back; a tighter first-token watchdog than the targets'.
[models."chain-lenient"]
fallback_on_refusal = true
ttft_timeout = "300ms"
targets = [{{ provider = "openai", model = "gpt-4o-mini" }}, {{ provider = "anthropic", model = "claude-sonnet-4-5" }}]

[models."claude-sonnet-4-5"]
targets = [{{ provider = "anthropic", model = "claude-sonnet-4-5" }}]

[models."gemini-2.5-flash"]
targets = [{{ provider = "gemini", model = "gemini-2.5-flash" }}]

[models."command-r-plus"]
targets = [{{ provider = "cohere", model = "command-r-plus" }}]

[models."text-embedding-3-small"]
targets = [{{ provider = "openai", model = "text-embedding-3-small" }}]

[models."gemini-embedding-001"]
targets = [{{ provider = "gemini", model = "gemini-embedding-001" }}]

[models."embed-v4.0"]
targets = [{{ provider = "cohere", model = "embed-v4.0" }}]

# Rerank: Cohere first, a self-hosted (vLLM, Jina's shape) reranker behind it.
[models."rerank-v3.5"]
targets = [{{ provider = "cohere", model = "rerank-v3.5" }}, {{ provider = "vllm", model = "bge-reranker-v2-m3" }}]

[models."bge-reranker-v2-m3"]
targets = [{{ provider = "vllm", model = "bge-reranker-v2-m3" }}]

# Images: OpenAI's model first, a self-hosted OpenAI-compatible one behind it.
[models."gpt-image-1"]
targets = [{{ provider = "openai", model = "gpt-image-1" }}, {{ provider = "vllm", model = "flux-schnell" }}]

[models."gemini-2.5-flash-image"]
targets = [{{ provider = "gemini", model = "gemini-2.5-flash-image" }}]

# Speech to text: OpenAI's Whisper, a self-hosted one (vLLM) behind it.
[models."whisper-1"]
targets = [{{ provider = "openai", model = "whisper-1" }}, {{ provider = "vllm", model = "whisper-large-v3" }}]

# Text to speech: OpenAI's, a self-hosted voice (unpriced) behind it.
[models."tts-1"]
targets = [{{ provider = "openai", model = "tts-1" }}, {{ provider = "vllm", model = "kokoro" }}]

[models."gpt-4o-mini"]
targets = [{{ provider = "openai", model = "gpt-4o-mini" }}]

[models."gpt-4.1"]
targets = [{{ provider = "openai", model = "gpt-4.1-2025" }}]

# Draft on Cohere, critique on Anthropic, rewrite on OpenAI (pipeline:blog).
[pipelines.blog]
description = "Draft, critique, rewrite"
steps = [
  {{ name = "draft", model = "command-r-plus", prompt = "Write a short blog post about: {{{{input}}}}" }},
  {{ name = "critique", model = "claude-sonnet-4-5", system = "You are a demanding editor.", prompt = "Critique this draft about {{{{input}}}}:\n{{{{steps.draft}}}}", max_tokens = 200 }},
  {{ name = "rewrite", model = "gpt-4o-mini", prompt = "Rewrite the draft using the critique.\nDraft: {{{{steps.draft}}}}\nCritique: {{{{steps.critique}}}}" }},
]

# A first step whose model falls back (openai, then anthropic, then vllm).
[pipelines.sturdy]
steps = [
  {{ name = "draft", model = "chain", prompt = "Draft: {{{{input}}}}" }},
  {{ name = "polish", model = "gpt-4o-mini", prompt = "Polish: {{{{steps.draft}}}}" }},
]
"#,
            max_body = opts.max_body_bytes,
            timeout = opts.request_timeout,
            nats = opts.nats_url,
            ack_wait = opts.ack_wait,
            base = mock.base_url(),
            anthropic = dialect_mocks[0].1.base_url_for("anthropic"),
            gemini = dialect_mocks[1].1.base_url_for("gemini"),
            cohere = dialect_mocks[2].1.base_url_for("cohere"),
            vllm = dialect_mocks[3].1.base_url_for("openai"),
            retries = opts.retries,
            ttft = opts.ttft_timeout,
            response = opts.response_timeout,
            batch_window = opts.batch_window,
            batch_extra = opts.batch_extra,
            server_extra = opts.server_extra,
            openai_extra = opts.openai_extra,
        );
        let mut config = config;
        config.push_str(&opts.sections);
        let mut clickhouse = None;
        if opts.clickhouse {
            let url = match opts.clickhouse_url {
                Some(u) => u,
                None => {
                    support::require_clickhouse().await;
                    support::clickhouse_url()
                }
            };
            let db = support::unique_database();
            config.push_str(&format!(
                "\n[clickhouse]\nurl = \"{url}\"\ndatabase = \"{db}\"\n\n[accounting]\nmax_rows = 100\nmax_wait = \"100ms\"\n"
            ));
            let parsed =
                sy_config::Config::from_toml(&config, &sy_config::MapEnv::default()).unwrap();
            let ch = parsed.clickhouse.unwrap();
            sy_accounting::migrate(&ch)
                .await
                .expect("migrating the test database");
            clickhouse = Some(ch);
        }
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, &config).unwrap();
        let config_text = config;
        let http = support::http();
        // Nothing that can panic between spawning the child and owning it in `Stack`,
        // whose Drop kills it.
        let split = opts.split_workers;
        let role: &[&str] = match (split > 0, opts.split_dispatcher) {
            (false, false) => &["all"],
            (true, false) => &["ingress"],
            (_, true) => &["ingress", "--no-dispatcher"],
        };
        let child = switchyard(&path, role, opts.log);
        let mut stack = Stack {
            mock,
            dialect_mocks,
            clickhouse,
            base: format!("http://127.0.0.1:{port}"),
            namespace,
            http,
            config_text,
            config_path: path.clone(),
            nats_url: opts.nats_url,
            child: Some(child),
            workers: std::sync::Mutex::new(Vec::new()),
            dispatcher: std::sync::Mutex::new(None),
            others: Vec::new(),
            log: opts.log,
            _dir: dir,
        };
        if opts.split_dispatcher {
            assert!(split > 0, "split_dispatcher needs split_workers");
            stack.start_dispatcher();
        }
        if split > 0 {
            if stack.clickhouse.is_some() {
                stack
                    .others
                    .push(switchyard(&path, &["accounting"], opts.log));
            }
            for _ in 0..split {
                stack.start_worker();
            }
        }
        stack.wait_ready().await;
        if split > 0 {
            stack.wait_workers_pulling(split).await;
        }
        stack
    }

    /// Waits until `n` worker processes pull openai's requests (each keeps a
    /// pull request waiting on the pool's consumer), so that work sent next is
    /// shared among them rather than taken by whichever started first.
    pub async fn wait_workers_pulling(&self, n: usize) {
        let subjects = sy_protocol::Subjects::new(&self.namespace);
        let js = async_nats::jetstream::new(support::nats().await);
        let mut waiting = 0;
        for _ in 0..400 {
            if let Ok(stream) = js.get_stream(subjects.request_stream()).await
                && let Ok(info) = stream
                    .consumer_info(subjects.worker_consumer("openai"))
                    .await
            {
                waiting = info.num_waiting;
                if waiting >= n {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{waiting} of {n} workers pull requests after 10 s");
    }

    /// Starts one more ingress process (`switchyard ingress --no-dispatcher`)
    /// on the same bus, on a port of its own; returns its base URL once ready.
    pub async fn start_other_ingress(&mut self) -> String {
        let port = support::free_port();
        let listen = self
            .config_text
            .lines()
            .find(|l| l.starts_with("listen = "))
            .unwrap()
            .to_owned();
        let text = self
            .config_text
            .replace(&listen, &format!("listen = \"127.0.0.1:{port}\""));
        let path = self._dir.path().join(format!("ingress-{port}.toml"));
        std::fs::write(&path, text).unwrap();
        self.others
            .push(switchyard(&path, &["ingress", "--no-dispatcher"], self.log));
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..400 {
            if let Ok(r) = self.http.get(format!("{base}/readyz")).send().await
                && r.status() == 200
            {
                return base;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the second ingress did not become ready at {base}");
    }

    async fn wait_ready(&mut self) {
        for _ in 0..400 {
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let mut err = String::new();
                if let Some(mut e) = self.child.as_mut().and_then(|c| c.stderr.take()) {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("switchyard exited with {status} before it was ready:\n{err}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("switchyard did not become ready at {}", self.base);
    }

    /// kill -9 of the `i`-th ingress started by [`Stack::start_other_ingress`],
    /// waiting for it to die.
    pub fn kill_other_ingress(&mut self, i: usize) {
        let child = &mut self.others[i];
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Requests the mocks of every provider received in total.
    pub fn upstream_requests(&self) -> u64 {
        self.mock.stats().requests
            + self
                .dialect_mocks
                .iter()
                .map(|(_, m)| m.stats().requests)
                .sum::<u64>()
    }

    /// Starts the batch dispatcher process (split_dispatcher).
    pub fn start_dispatcher(&self) {
        *self.dispatcher.lock().unwrap() =
            Some(switchyard(&self.config_path, &["dispatcher"], self.log));
    }

    /// kill -9 of the batch dispatcher process, waiting for it to die.
    pub fn kill_dispatcher(&self) {
        let mut c = self
            .dispatcher
            .lock()
            .unwrap()
            .take()
            .expect("a dispatcher");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// Starts one more worker process; returns its index.
    pub fn start_worker(&self) -> usize {
        let mut w = self.workers.lock().unwrap();
        w.push(Some(switchyard(&self.config_path, &["worker"], self.log)));
        w.len() - 1
    }

    /// Sends `signal` (e.g. "-KILL", "-TERM") to worker `i`.
    pub fn signal_worker(&self, i: usize, signal: &str) {
        let pid = self.workers.lock().unwrap()[i]
            .as_ref()
            .map(Child::id)
            .expect("a live worker");
        let ok = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} {pid}");
    }

    /// Waits for worker `i` to exit (after a signal); its exit status.
    pub fn wait_worker(&self, i: usize) -> std::process::ExitStatus {
        let c = self.workers.lock().unwrap()[i].take();
        c.expect("a live worker").wait().unwrap()
    }

    /// Sends `signal` to the ingress (or `all`) process.
    pub fn signal_ingress(&self, signal: &str) {
        let pid = self.child.as_ref().map(Child::id).expect("running");
        let ok = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} {pid}");
    }

    /// Stops the ingress (or `all`) process and returns what it logged.
    pub fn stop_and_read_log(&mut self) -> String {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
        let mut log = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut log);
        }
        log
    }

    /// Waits for the ingress (or `all`) process to exit.
    pub fn wait_ingress(&mut self) -> std::process::ExitStatus {
        self.child.take().expect("running").wait().unwrap()
    }

    /// Sends SIGHUP to the switchyard process (reload its routing table).
    pub fn hangup(&self) {
        let pid = self.child.as_ref().map(|c| c.id()).unwrap();
        let ok = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP {pid}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The dialect mock named `name` (`anthropic`, `gemini`, `cohere`, `vllm`).
    pub fn dialect_mock(&self, name: &str) -> &MockProvider {
        self.dialect_mocks
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| m)
            .unwrap_or_else(|| panic!("no dialect mock named {name}"))
    }

    /// `GET /metrics` of the stack's ingress: the Prometheus text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `POST /v1/messages` as an Anthropic client sends it.
    pub fn messages(&self, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(self.url("/v1/messages"))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .json(body)
    }

    /// `GET /v1/route/targets` with the test key: every target's live state.
    pub async fn live_targets(&self) -> Value {
        self.http
            .get(self.url("/v1/route/targets"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Reads `sql` (`{db}` names the stack's ClickHouse database) until
    /// `done` holds for its rows or 15 s pass, and returns the last read:
    /// usage rows arrive a batch after their request.
    pub async fn rows_until<T>(&self, sql: &str, done: impl Fn(&[T]) -> bool) -> Vec<T>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        let ch = self.clickhouse.as_ref().expect("a stack with ClickHouse");
        let client = sy_accounting::client(ch);
        let sql = sql.replace("{db}", &ch.database);
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let rows: Vec<T> = client.query(&sql).fetch_all().await.unwrap();
            if done(&rows) || Instant::now() > until {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A chat completion request with the test key and a JSON body.
    pub fn chat(&self, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(body)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let children = self
            .child
            .take()
            .into_iter()
            .chain(
                self.workers
                    .get_mut()
                    .map(|w| w.iter_mut().filter_map(Option::take).collect::<Vec<_>>())
                    .unwrap_or_default(),
            )
            .chain(self.others.drain(..))
            .chain(self.dispatcher.get_mut().ok().and_then(Option::take));
        for mut c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let url = self.nats_url.clone();
        let ns = self.namespace.clone();
        let ch = self.clickhouse.take();
        // Clean up this test's streams without blocking the test's runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    if let Ok(c) = async_nats::connect(&url).await {
                        support::delete_namespace(&c, &ns).await;
                    }
                    if let Some(ch) = ch {
                        // Bounded: the server may be the one a failed test left stopped.
                        let _ = tokio::time::timeout(
                            Duration::from_secs(10),
                            sy_accounting::client(&ch)
                                .query(&format!("DROP DATABASE IF EXISTS {}", ch.database))
                                .execute(),
                        )
                        .await;
                    }
                });
            }
        })
        .join();
    }
}

/// Sends a request and parses its JSON answer (whatever the status).
pub async fn json_of(r: reqwest::RequestBuilder) -> Value {
    r.send().await.unwrap().json().await.unwrap()
}

/// A one-message chat body.
/// Asserts `resp` is an error of `status` whose message contains `needle`;
/// its body.
pub async fn refused(resp: reqwest::Response, status: u16, needle: &str) -> Value {
    assert_eq!(resp.status(), status);
    let v: Value = resp.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{v}");
    v
}

pub fn body(model: &str, prompt: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}]})
}

/// The envelope an ingress would publish for a chat request of
/// `gpt-4o-mini` to openai, as a test publishes it by hand (key `test`,
/// attempt 1, no route choice or fallbacks); adjust fields as needed.
pub fn envelope(
    request_id: uuid::Uuid,
    reply_to: String,
    received_unix_ms: u64,
    deadline_unix_ms: u64,
    prompt: &str,
) -> sy_protocol::RequestEnvelope {
    sy_protocol::RequestEnvelope {
        request_id,
        attempt: 1,
        ingress_id: "test".into(),
        reply_to,
        received_unix_ms,
        deadline_unix_ms,
        key_id: "test".into(),
        org_id: None,
        project_id: None,
        api: sy_protocol::ApiSurface::ChatCompletions,
        model: "gpt-4o-mini".into(),
        provider: "openai".into(),
        upstream_model: "gpt-4o-mini".into(),
        request: serde_json::from_value(body("gpt-4o-mini", prompt)).unwrap(),
        embeddings: None,
        rerank: None,
        images: None,
        transcription: None,
        speech: None,
        class: None,
        choice: None,
        fallback: Vec::new(),
        fallback_reason: None,
        mid_stream: Default::default(),
        resume: None,
        fallback_on_refusal: false,
        watchdogs: Default::default(),
        batch: None,
        limits: None,
        pricing: None,
        tags: Vec::new(),
        pipeline: None,
        timing: false,
    }
}

/// The `content` of choice 0 of a non-streamed completion.
pub fn content(v: &Value) -> &str {
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
}

/// Concatenated content deltas of choice `index` of a stream's data payloads.
pub fn streamed_content(data: &[String], index: u64) -> String {
    data.iter()
        .filter(|d| d.as_str() != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .flat_map(|v| v["choices"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["index"].as_u64() == Some(index))
        .filter_map(|c| c["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

/// The first entry of `provider` in a [`Stack::live_targets`] document's
/// `list` (`"targets"` or `"providers"`).
pub fn live_entry<'a>(v: &'a Value, list: &str, provider: &str) -> Option<&'a Value> {
    v[list]
        .as_array()?
        .iter()
        .find(|t| t["provider"] == provider)
}
