use std::collections::BTreeMap;

use serde::Deserialize;

/// The configuration file as written (after `${VAR}` interpolation).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The HTTP ingress.
    #[serde(default)]
    pub server: RawServer,
    /// The NATS connection and JetStream settings.
    #[serde(default)]
    pub nats: RawNats,
    /// Static API keys accepted by the ingress.
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// Admin API tokens from the config (local development, or
    /// `"${SWITCHYARD_ADMIN_TOKEN}"` in production).
    #[serde(default)]
    pub admin_tokens: Vec<RawAdminToken>,
    /// Provider entries by name; the name is used in subjects, headers and analytics.
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    /// Models clients may ask for, by the name they use, with the targets serving each.
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
    /// Smart routers (`model: "auto"`, `"auto:<name>"`).
    #[serde(default)]
    pub routers: BTreeMap<String, crate::routing::RawRouter>,
    /// What tenants are billed on top of provider cost.
    #[serde(default)]
    pub billing: RawBilling,
    /// Where usage rows go; without it no accounting runs.
    #[serde(default)]
    pub clickhouse: Option<RawClickhouse>,
    /// The control plane's database (tenants and keys).
    #[serde(default)]
    pub postgres: Option<RawPostgres>,
    /// Tenants' API keys from the control plane (needs `[postgres]`).
    #[serde(default)]
    pub tenants: Option<RawTenants>,
    /// Where rate limits are counted.
    #[serde(default)]
    pub redis: Option<RawRedis>,
    /// How rate limits are applied.
    #[serde(default)]
    pub limits: RawLimits,
    /// `[cache]`: the exact response cache.
    #[serde(default)]
    pub cache: crate::cache::RawCache,
    /// `[pipelines.<name>]`: multi-step pipelines (`pipeline:<name>`).
    #[serde(default)]
    pub pipelines: BTreeMap<String, crate::pipeline::RawPipeline>,
    /// Provider credentials in the control plane, sealed under a master key.
    #[serde(default)]
    pub credentials: Option<RawCredentials>,
    /// The accounting consumer.
    #[serde(default)]
    pub accounting: RawAccounting,
    /// Live target health as smart routers see it.
    #[serde(default)]
    pub health: RawHealth,
    /// Batch jobs (the Files and Batches API, `<ns>.batch.submit`).
    #[serde(default)]
    pub batch: RawBatch,
    /// Prometheus metrics (`GET /metrics`).
    #[serde(default)]
    pub metrics: RawMetrics,
    /// OpenTelemetry traces exported over OTLP.
    #[serde(default)]
    pub tracing: RawTracing,
    /// The process's log lines.
    #[serde(default)]
    pub log: RawLog,
}

/// `[tracing]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTracing {
    /// On or off; none: on when `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set.
    pub enabled: Option<bool>,
    /// The OTLP/HTTP traces URL (`http://127.0.0.1:4318/v1/traces`); none:
    /// the standard `OTEL_EXPORTER_OTLP_*` variables, else that default.
    pub endpoint: Option<String>,
    /// `http/protobuf` or `http/json`; none: `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// else `http/protobuf`.
    pub protocol: Option<String>,
    /// The share of new traces kept, 0 to 1 (a continued trace follows its
    /// caller's decision).
    pub sample_ratio: Option<f64>,
    /// Whether prompts and answers are recorded on the provider-call spans.
    pub record_content: bool,
    /// The traces' `service.name`; none: `OTEL_SERVICE_NAME`, else `switchyard`.
    pub service_name: Option<String>,
    /// Where a trace is seen, with `{trace_id}` for its id (Jaeger:
    /// `http://127.0.0.1:16686/trace/{trace_id}`): the console links to it.
    pub viewer_url: Option<String>,
}

/// `[log]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// `text` or `json` (one object a line); `SWITCHYARD_LOG_FORMAT` wins.
    pub format: Option<String>,
    /// An `EnvFilter` directive (`info`, `sy_worker=debug,info`);
    /// `SWITCHYARD_LOG`, then `RUST_LOG`, win.
    pub level: Option<String>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Where a worker, accounting or dispatcher process serves `GET /metrics`
    /// (`127.0.0.1:9464`); none: it serves none. The ingress serves it on its
    /// own port.
    pub listen: Option<String>,
    /// A bearer token `GET /metrics` must carry; none: anyone who reaches the
    /// port may read it.
    pub token: Option<String>,
}

/// `[batch]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBatch {
    /// Largest input file, bytes.
    pub max_file_bytes: u64,
    /// Most lines in an input file.
    pub max_lines: u64,
    /// Billed price of a batch item relative to an interactive call, a decimal like "0.5".
    pub price_multiplier: String,
    /// Items of one batch dispatched and not yet answered, at most.
    pub window: u32,
    /// Items dispatched per second by one dispatcher process, at most (0: no limit).
    pub max_rate: u32,
    /// How long uploaded and produced files are kept, e.g. "30d".
    pub file_max_age: String,
    /// Key signing completion webhooks (HMAC-SHA256); webhooks are unsigned without it.
    pub webhook_secret: Option<String>,
    /// Networks (CIDR, e.g. "10.1.0.0/16", or one address) that webhooks may
    /// reach although loopback, private or link-local (refused by default).
    pub webhook_allow: Vec<String>,
    /// Batches of one API key that one dispatcher process runs at once.
    pub max_running_per_key: u32,
    /// Deliveries of one item to workers before it is given up with an error.
    pub max_deliver: u32,
}

impl Default for RawBatch {
    fn default() -> Self {
        RawBatch {
            max_file_bytes: 200 * 1024 * 1024,
            max_lines: 50_000,
            price_multiplier: "0.5".into(),
            window: 64,
            max_rate: 100,
            file_max_age: "30d".into(),
            webhook_secret: None,
            webhook_allow: Vec::new(),
            max_running_per_key: 4,
            max_deliver: 10,
        }
    }
}

/// `[health]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    /// Consecutive failed calls after which a target counts as unhealthy.
    pub failure_threshold: u32,
    /// How long an unhealthy target is skipped before it gets traffic again.
    pub cool_down: String,
    /// Share of failed calls among the last `window` that makes a target
    /// unhealthy (a flapping provider), once `min_calls` were seen.
    pub error_rate: f64,
    /// Calls the error rate is measured over (at most 64).
    pub window: u32,
    /// Calls needed before the error rate counts.
    pub min_calls: u32,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            failure_threshold: 3,
            cool_down: "10s".into(),
            error_rate: 0.5,
            window: 20,
            min_calls: 10,
        }
    }
}

/// `[billing]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBilling {
    /// Markup on provider cost in percent, a decimal string like "20" or "7.5".
    pub markup_percent: String,
    /// `[billing.stripe]`: Stripe's webhooks (issue 18).
    pub stripe: Option<RawStripe>,
    /// `[billing.yookassa]`: YooKassa's payments and notifications.
    pub yookassa: Option<RawYookassa>,
    /// `[billing.exchange_rates]`: USD per unit of each other currency a
    /// top-up may be made in, decimal strings (`rub = "0.0125"`).
    pub exchange_rates: std::collections::BTreeMap<String, String>,
}

impl Default for RawBilling {
    fn default() -> Self {
        RawBilling {
            markup_percent: "0".into(),
            stripe: None,
            yookassa: None,
            exchange_rates: Default::default(),
        }
    }
}

/// `[billing.yookassa]`: YooKassa's API and notifications.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawYookassa {
    /// The shop's id (the API's Basic auth user).
    pub shop_id: String,
    /// The shop's secret key (`live_…`/`test_…`).
    pub secret_key: String,
    /// YooKassa's API (`https://api.yookassa.ru`; a mock's in tests).
    pub api_base: Option<String>,
    /// Where the payer lands after paying.
    pub return_url: Option<String>,
    /// Where notifications may come from (YooKassa's published ranges).
    pub notification_ips: Option<Vec<String>>,
    /// Proxies in front of the ingress whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// `[postgres]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    /// Connection URL, e.g. "postgres://switchyard:...@127.0.0.1:5432/switchyard".
    pub url: String,
}

/// `[credentials]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredentials {
    /// The master key (32 bytes, hex or base64), e.g. `"${SWITCHYARD_MASTER_KEY}"`.
    #[serde(default)]
    pub master_key: Option<String>,
    /// Or a file holding it.
    #[serde(default)]
    pub master_key_file: Option<String>,
    /// Its version (new seals carry it).
    #[serde(default = "default_master_key_version")]
    pub master_key_version: i32,
    /// Older master keys by version, still opening what they sealed until
    /// everything is re-sealed.
    #[serde(default)]
    pub previous_master_keys: BTreeMap<String, String>,
}

fn default_master_key_version() -> i32 {
    1
}

/// `[tenants]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenants {
    /// The server-side secret API keys are hashed with (at least 32 bytes),
    /// normally `"${SWITCHYARD_KEY_PEPPER}"`.
    pub key_pepper: String,
    /// What new keys name as their deployment (`sy_<env>_…`).
    #[serde(default = "default_key_env")]
    pub key_env: String,
    /// Seconds between full reloads of the key table (a safety net: changes
    /// arrive over NATS at once).
    #[serde(default = "default_resync_seconds")]
    pub resync_seconds: u64,
}

fn default_key_env() -> String {
    "live".into()
}

fn default_resync_seconds() -> u64 {
    60
}

/// `[clickhouse]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClickhouse {
    /// HTTP URL, e.g. "http://127.0.0.1:8123".
    pub url: String,
    /// Database holding the `requests` table.
    #[serde(default = "default_database")]
    pub database: String,
    /// User.
    #[serde(default = "default_user")]
    pub user: String,
    /// Password.
    #[serde(default)]
    pub password: Option<String>,
}

fn default_database() -> String {
    "switchyard".into()
}

fn default_user() -> String {
    "default".into()
}

/// `[accounting]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAccounting {
    /// Insert when this many events are waiting.
    pub max_rows: usize,
    /// Insert at the latest this long after the first waiting event, e.g. "1s".
    pub max_wait: String,
    /// How long usage events stay in the usage stream, e.g. "7d".
    pub usage_max_age: String,
    /// How long a consumer may hold events unacked before they go to another, e.g. "30s".
    pub ack_wait: String,
}

impl Default for RawAccounting {
    fn default() -> Self {
        RawAccounting {
            max_rows: 10_000,
            max_wait: "1s".into(),
            usage_max_age: "7d".into(),
            ack_wait: "30s".into(),
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// Address the ingress listens on.
    pub listen: String,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: u64,
    /// Largest accepted upload (a multipart audio body) in bytes.
    pub max_upload_bytes: u64,
    /// Time a request may take in all, e.g. "120s".
    pub request_timeout: String,
    /// Name of this ingress instance in reply subjects; random when unset.
    pub ingress_id: Option<String>,
    /// How long an `Idempotency-Key` and its first result are remembered.
    pub idempotency_window: String,
    /// Open connections at most; one more is answered 503 and closed.
    pub max_connections: u64,
    /// Time a connection has to send a request's headers (also the idle
    /// keep-alive limit), e.g. "30s".
    pub header_timeout: String,
    /// Time a body may take before `min_body_rate` applies, e.g. "10s".
    pub body_timeout: String,
    /// Bytes per second a body must average after `body_timeout`.
    pub min_body_rate: u64,
    /// Body bytes being received by all requests together, at most.
    pub max_body_bytes_in_flight: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 4 * 1024 * 1024,
            max_upload_bytes: 25 * 1024 * 1024,
            request_timeout: "120s".into(),
            ingress_id: None,
            idempotency_window: "24h".into(),
            max_connections: 10_000,
            header_timeout: "30s".into(),
            body_timeout: "10s".into(),
            min_body_rate: 32 * 1024,
            max_body_bytes_in_flight: 256 * 1024 * 1024,
        }
    }
}

/// `[nats]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNats {
    /// Server URL, e.g. "nats://127.0.0.1:4222".
    pub url: String,
    /// Prefix of every subject and stream name (`sy` → `sy.req.…`, `SY_REQ`).
    pub namespace: String,
    /// How long an unconsumed request may wait in the request stream.
    pub request_max_age: String,
    /// How long a worker may hold a request without an ack or progress before redelivery.
    pub ack_wait: String,
    /// How many times a request is delivered at most.
    pub max_deliver: i64,
    /// How long the ingress waits for JetStream to confirm a publish.
    pub publish_timeout: String,
    /// How long the ingress publishes a request again while JetStream cannot
    /// store it ("0s": answer 503 at once).
    pub publish_retry: String,
    /// Replicas of the streams (1 on a single server).
    pub replicas: usize,
}

impl Default for RawNats {
    fn default() -> Self {
        RawNats {
            url: "nats://127.0.0.1:4222".into(),
            namespace: "sy".into(),
            request_max_age: "10m".into(),
            ack_wait: "30s".into(),
            max_deliver: 3,
            publish_timeout: "2s".into(),
            publish_retry: "0s".into(),
            replicas: 1,
        }
    }
}

/// `[[keys]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// A name for the key, recorded with each request.
    pub name: String,
    /// The bearer token clients send.
    pub key: String,
    /// Its rate limits (needs `[redis]`); `[limits.defaults.key]` when absent.
    #[serde(default)]
    pub limits: Option<RawLimitSet>,
}

/// `[billing.stripe]`: Stripe's webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStripe {
    /// The endpoint's signing secrets (`whsec_…`): one, or two while one is
    /// rolled.
    pub webhook_secrets: Vec<String>,
    /// How far a signature's timestamp may be from now, seconds (300).
    pub tolerance_seconds: Option<u64>,
    /// Stripe's API (`https://api.stripe.com`; a mock's address in tests).
    pub api_base: Option<String>,
    /// The account's secret key (`sk_…`); without it no top-up is made
    /// through Stripe (its webhooks are still taken).
    pub secret_key: Option<String>,
    /// Where the payer lands after paying.
    pub success_url: Option<String>,
    /// Where the payer lands after giving up.
    pub cancel_url: Option<String>,
}

/// `[redis]`: where rate limits are counted (every ingress replica shares it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://host:port[/db]` (or `rediss://`).
    pub url: String,
}

/// One scope's rate limits; an absent one is no limit of that kind.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimitSet {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    pub concurrency: Option<u64>,
}

/// `[limits]`: how rate limits are applied (the limits themselves are each
/// key's, project's and org's, set through the admin API).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// How long a request's concurrency lease lasts unless renewed (it is
    /// renewed while the request runs; a dead process's expires).
    pub lease_seconds: u64,
    /// Output tokens reserved for a request that sets no `max_tokens`.
    pub reserve_output_tokens: u64,
    /// The same, per model name clients use.
    pub reserve_output_tokens_by_model: BTreeMap<String, u64>,
    /// Limits for scopes that have none of their own.
    pub defaults: RawLimitDefaults,
    /// Seconds between rounds setting each budget's spend to what the usage
    /// rows in ClickHouse say.
    pub reconcile_seconds: u64,
    /// Busy keys' requests admitted from allowances each ingress holds
    /// (docs/limits.md "Allowances"); off: every request asks Redis.
    pub allowances: bool,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            lease_seconds: 30,
            reserve_output_tokens: 1024,
            reserve_output_tokens_by_model: BTreeMap::new(),
            defaults: RawLimitDefaults::default(),
            reconcile_seconds: 30,
            allowances: true,
        }
    }
}

/// `[limits.defaults]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimitDefaults {
    /// For every key (tenants' and the config file's) without limits of its own.
    pub key: Option<RawLimitSet>,
    /// For every project without limits of its own.
    pub project: Option<RawLimitSet>,
    /// For every org without limits of its own.
    pub org: Option<RawLimitSet>,
}

/// `[[admin_tokens]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminToken {
    /// Who this is, as the audit log names it.
    pub name: String,
    /// The bearer token.
    pub token: String,
    /// `owner`, `admin`, `operator`, `billing` or `viewer`.
    pub role: String,
    /// Limits the token to one org (its UUID); none: the whole deployment.
    #[serde(default)]
    pub org_id: Option<String>,
}

/// `[providers.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// The dialect or preset: "openai_compatible" (alias "openai"), "azure_openai",
    /// "deepseek", "mistral", "groq", "together", "openrouter", "vllm", "ollama",
    /// "anthropic", "gemini", "cohere".
    pub kind: String,
    /// Base URL including the version path, e.g. "https://api.openai.com/v1";
    /// presets have a default.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Key sent to the provider; usually "${OPENAI_API_KEY}".
    #[serde(default)]
    pub api_key: Option<String>,
    /// Azure's `api-version` query parameter; Anthropic's `anthropic-version` header.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Anthropic requires max_tokens: used when the client gave none.
    #[serde(default)]
    pub default_max_tokens: Option<u32>,
    /// TCP/TLS connect timeout, e.g. "5s".
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// Most requests in flight to this provider across the cluster.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// New requests skip this provider (or get 503) while this many wait for it.
    #[serde(default)]
    pub max_queue: Option<u64>,
    /// Cap on batch items in flight to this provider (cluster-wide), beside `max_concurrency`.
    #[serde(default)]
    pub batch_concurrency: Option<u32>,
    /// Retries on this target after a 429, 5xx or failed connection (default 2).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Streamed calls: longest wait for the first token, e.g. "10s".
    #[serde(default)]
    pub ttft_timeout: Option<String>,
    /// Streamed calls: longest wait for the response's headers, e.g. "30s";
    /// when set, `ttft_timeout` counts from the headers.
    #[serde(default)]
    pub header_timeout: Option<String>,
    /// Streamed calls: longest silence between two chunks, e.g. "10s".
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// Calls that are not streamed: longest wait for the whole answer, e.g. "60s".
    #[serde(default)]
    pub response_timeout: Option<String>,
    /// The target continues a final assistant message (prefill); default true
    /// for anthropic and vllm.
    #[serde(default)]
    pub prefill: Option<bool>,
    /// Extra headers sent on every call (e.g. OpenAI-Organization).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Prices by upstream model name.
    #[serde(default)]
    pub prices: BTreeMap<String, RawPrice>,
    /// Facts about upstream models (context window, quality per class), for routing.
    #[serde(default)]
    pub models: BTreeMap<String, crate::routing::RawModelInfo>,
}

/// `[providers.<name>.prices."<model>"]`: USD per million tokens, as decimal
/// strings (and USD per request or image). Also a price version's entry in
/// the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    /// Uncached input tokens, e.g. "0.15".
    pub input: String,
    /// Output tokens, e.g. "0.60".
    pub output: String,
    /// Input tokens read from the cache; the input price when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<String>,
    /// Input tokens written to the cache (for five minutes); the input price
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<String>,
    /// Input tokens written to the cache for an hour; `cache_write` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h: Option<String>,
    /// Reasoning output tokens; `output` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_output: Option<String>,
    /// USD per request that reaches the provider (none when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_request: Option<String>,
    /// USD per image in the request (none when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_image: Option<String>,
    /// USD per rerank search unit (none when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_search_unit: Option<String>,
    /// USD per generated image (none when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_output_image: Option<String>,
    /// USD per second of audio transcribed (none when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_audio_second: Option<String>,
    /// USD per character of text spoken (none when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_character: Option<String>,
}

impl RawPrice {
    /// Input and output prices only (every other class at its default).
    pub fn new(input: &str, output: &str) -> Self {
        RawPrice {
            input: input.to_owned(),
            output: output.to_owned(),
            cached_input: None,
            cache_write: None,
            cache_write_1h: None,
            reasoning_output: None,
            per_request: None,
            per_image: None,
            per_search_unit: None,
            per_output_image: None,
            per_audio_second: None,
            per_character: None,
        }
    }
}

/// `[models.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// Targets in order of preference.
    pub targets: Vec<RawTarget>,
    /// "recover" (default) or "error": a stream that fails after output reached
    /// the client continues on the next target, or ends with an error.
    #[serde(default)]
    pub mid_stream: Option<String>,
    /// A content refusal falls back to the next target (default false).
    #[serde(default)]
    pub fallback_on_refusal: bool,
    /// Watchdogs for this route, overriding its targets' (e.g. "30s").
    #[serde(default)]
    pub ttft_timeout: Option<String>,
    /// See `ttft_timeout`.
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// See `ttft_timeout`.
    #[serde(default)]
    pub response_timeout: Option<String>,
}

/// One target of a model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// A provider entry's name.
    pub provider: String,
    /// The model name at that provider.
    pub model: String,
}
