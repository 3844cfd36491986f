//! The validated configuration: what the program may assume once
//! [`Config::validate`](crate::Config::validate) has accepted the file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use url::Url;

use crate::price::Price;

/// A secret value: usable, but printed as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The HTTP ingress.
    pub server: ServerConfig,
    /// NATS.
    pub nats: NatsConfig,
    /// Accepted API keys.
    pub keys: Vec<ApiKey>,
    /// Admin API tokens from the config.
    pub admin_tokens: Vec<AdminToken>,
    /// Provider entries by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Model routes by the name clients use.
    pub models: BTreeMap<String, ModelRoute>,
    /// Smart routers by name (`auto`, `auto:<name>`).
    pub routers: BTreeMap<String, crate::routing::RouterConfig>,
    /// Markup on provider cost, parts per billion (10⁹ = +100 %).
    pub markup_ppb: i64,
    /// Where usage rows go, if anywhere.
    pub clickhouse: Option<ClickhouseConfig>,
    /// The control plane's database, if configured.
    pub postgres: Option<PostgresConfig>,
    /// Tenants' API keys from the control plane, if on.
    pub tenants: Option<TenantsConfig>,
    /// Where rate limits are counted, if anywhere (without it no limit is enforced).
    pub redis: Option<RedisConfig>,
    /// `[billing]`: payment providers (none: no webhook is taken).
    pub billing: BillingConfig,
    /// How rate limits are applied.
    pub limits: LimitsConfig,
    /// The exact response cache, when on.
    pub cache: Option<crate::cache::CacheConfig>,
    /// Pipelines by name (clients call `pipeline:<name>`).
    pub pipelines: BTreeMap<String, crate::pipeline::Pipeline>,
    /// Provider credentials' master keys, if configured.
    pub credentials: Option<CredentialsConfig>,
    /// The accounting consumer.
    pub accounting: AccountingConfig,
    /// Live target health.
    pub health: HealthConfig,
    /// Batch jobs.
    pub batch: BatchConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// OpenTelemetry traces.
    pub tracing: TracingConfig,
    /// Log lines.
    pub log: LogConfig,
}

/// `[tracing]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// On, off, or (none) on when an OTLP endpoint variable is set.
    pub enabled: Option<bool>,
    /// The OTLP/HTTP traces URL, if the config names one.
    pub endpoint: Option<String>,
    /// `http/protobuf` or `http/json`, if the config names one.
    pub protocol: Option<String>,
    /// The share of new traces kept, 0 to 1.
    pub sample_ratio: f64,
    /// Whether prompts and answers are recorded on provider-call spans.
    pub record_content: bool,
    /// The traces' `service.name`, if the config names one.
    pub service_name: Option<String>,
    /// A trace viewer's URL with `{trace_id}`, for the console's links.
    pub viewer_url: Option<String>,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            enabled: None,
            endpoint: None,
            protocol: None,
            sample_ratio: 1.0,
            record_content: false,
            service_name: None,
            viewer_url: None,
        }
    }
}

/// The OTLP protocols Switchyard exports with.
pub const TRACE_PROTOCOLS: [&str; 2] = ["http/protobuf", "http/json"];

/// `[log]`, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogConfig {
    /// One JSON object a line instead of text.
    pub json: bool,
    /// The filter directive, if the config names one.
    pub level: Option<String>,
}

/// `[metrics]`, validated.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// Where a non-ingress process serves `GET /metrics`.
    pub listen: Option<std::net::SocketAddr>,
    /// The bearer token `GET /metrics` needs, if any.
    pub token: Option<Secret>,
}

/// `[batch]`, validated.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Largest input file, bytes.
    pub max_file_bytes: u64,
    /// Most lines in an input file.
    pub max_lines: u64,
    /// Billed price of a batch item relative to an interactive call, parts per billion.
    pub price_multiplier_ppb: i64,
    /// Items of one batch dispatched and not yet answered, at most.
    pub window: u32,
    /// Items dispatched per second by one dispatcher process, at most (0: no limit).
    pub max_rate: u32,
    /// How long uploaded and produced files are kept.
    pub file_max_age: Duration,
    /// Key signing completion webhooks.
    pub webhook_secret: Option<Secret>,
    /// Networks webhooks may reach although loopback, private or link-local.
    pub webhook_allow: Vec<ipnet::IpNet>,
    /// Batches of one API key that one dispatcher process runs at once.
    pub max_running_per_key: u32,
    /// Deliveries of one item to workers before it is given up with an error.
    pub max_deliver: u32,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_file_bytes: 200 * 1024 * 1024,
            max_lines: 50_000,
            price_multiplier_ppb: 500_000_000,
            window: 64,
            max_rate: 100,
            file_max_age: Duration::from_secs(30 * 86_400),
            webhook_secret: None,
            webhook_allow: Vec::new(),
            max_running_per_key: 4,
            max_deliver: 10,
        }
    }
}

/// `[health]`, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthConfig {
    /// Consecutive failed calls after which a target counts as unhealthy.
    pub failure_threshold: u32,
    /// How long an unhealthy target is skipped before it gets traffic again.
    pub cool_down: Duration,
    /// Failed share of the last `window` calls that makes a target unhealthy.
    pub error_rate: f64,
    /// Calls the error rate is measured over (1 to 64).
    pub window: u32,
    /// Calls needed before the error rate counts.
    pub min_calls: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            failure_threshold: 3,
            cool_down: Duration::from_secs(10),
            error_rate: 0.5,
            window: 20,
            min_calls: 10,
        }
    }
}

/// `[postgres]`, validated.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// Connection URL (`postgres://` or `postgresql://`); a secret, since it
    /// may carry the password.
    pub url: Secret,
}

/// `[tenants]`, validated: tenants' keys are authenticated from the control
/// plane's table (kept in memory, current over NATS).
#[derive(Debug, Clone)]
pub struct TenantsConfig {
    /// The pepper keys are hashed with (at least 32 bytes).
    pub key_pepper: Secret,
    /// What new keys name as their deployment.
    pub key_env: String,
    /// Time between full reloads of the key table.
    pub resync: std::time::Duration,
}

/// `[credentials]`, validated: the master keys provider credentials are
/// sealed with (each 32 bytes, as its text: hex or base64).
#[derive(Debug, Clone)]
pub struct CredentialsConfig {
    /// The current master key's version and text.
    pub current: (i32, Secret),
    /// Older versions still able to open what they sealed.
    pub previous: Vec<(i32, Secret)>,
}

/// `[clickhouse]`, validated.
#[derive(Debug, Clone)]
pub struct ClickhouseConfig {
    /// HTTP URL.
    pub url: Url,
    /// Database of the `requests` table.
    pub database: String,
    /// User.
    pub user: String,
    /// Password.
    pub password: Option<Secret>,
}

/// `[accounting]`, validated.
#[derive(Debug, Clone)]
pub struct AccountingConfig {
    /// Batch size that triggers an insert.
    pub max_rows: usize,
    /// Batch age that triggers an insert.
    pub max_wait: Duration,
    /// Max age of events in the usage stream.
    pub usage_max_age: Duration,
    /// The consumer's ack wait: a crashed consumer's events go to another after it.
    pub ack_wait: Duration,
}

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Largest accepted upload (multipart audio).
    pub max_upload_bytes: usize,
    /// Whole-request deadline.
    pub request_timeout: Duration,
    /// This ingress's name in reply subjects, if fixed.
    pub ingress_id: Option<String>,
    /// How long an `Idempotency-Key` and its first result are remembered.
    pub idempotency_window: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// Time for a request's headers to arrive (and idle keep-alive limit).
    pub header_timeout: Duration,
    /// Time a body may take before the minimum rate applies.
    pub body_timeout: Duration,
    /// Average bytes per second a body must arrive at after `body_timeout`.
    pub min_body_rate: u64,
    /// Body bytes being received by all requests together, at most.
    pub max_body_bytes_in_flight: usize,
}

/// `[nats]`, validated.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URL.
    pub url: String,
    /// Subject and stream prefix.
    pub namespace: String,
    /// Max age of requests in the request stream.
    pub request_max_age: Duration,
    /// Consumer ack wait.
    pub ack_wait: Duration,
    /// Consumer max deliveries.
    pub max_deliver: i64,
    /// Wait for a publish ack at most this long.
    pub publish_timeout: Duration,
    /// How long the ingress publishes a request again while JetStream cannot
    /// store it (zero: it answers 503 at once).
    pub publish_retry: Duration,
    /// Stream replicas.
    pub replicas: usize,
}

/// An accepted API key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Its name.
    pub name: String,
    /// The token.
    pub key: Secret,
    /// Its rate limits, if it has its own.
    pub limits: Option<LimitSet>,
}

/// `[billing]`, validated.
#[derive(Debug, Clone, Default)]
pub struct BillingConfig {
    /// `[billing.stripe]`, if Stripe's webhooks are taken.
    pub stripe: Option<StripeConfig>,
    /// `[billing.yookassa]`, if YooKassa is used.
    pub yookassa: Option<YookassaConfig>,
    /// Nano-USD per major unit of each currency besides USD that top-ups may
    /// be made in (lowercase codes).
    pub exchange_rates: std::collections::BTreeMap<String, i64>,
}

/// The addresses YooKassa sends notifications from (its documentation,
/// "Incoming notifications": IP authentication), the default of
/// `[billing.yookassa] notification_ips`.
pub const YOOKASSA_NOTIFICATION_RANGES: [&str; 7] = [
    "185.71.76.0/27",
    "185.71.77.0/27",
    "77.75.153.0/25",
    "77.75.156.11/32",
    "77.75.156.35/32",
    "77.75.154.128/25",
    "2a02:5180::/32",
];

/// `[billing.yookassa]`, validated.
#[derive(Debug, Clone)]
pub struct YookassaConfig {
    /// YooKassa's API base URL.
    pub api_base: String,
    /// The shop's id.
    pub shop_id: String,
    /// The shop's secret key.
    pub secret_key: Secret,
    /// Where the payer lands after paying.
    pub return_url: String,
    /// Where notifications may come from.
    pub notification_ips: Vec<ipnet::IpNet>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// `[billing.stripe]`, validated.
#[derive(Debug, Clone)]
pub struct StripeConfig {
    /// The endpoint's signing secrets (at least one).
    pub webhook_secrets: Vec<Secret>,
    /// How far a signature's timestamp may be from now.
    pub tolerance: std::time::Duration,
    /// Top-ups through Stripe Checkout, when a secret key is configured.
    pub checkout: Option<StripeCheckoutConfig>,
}

/// `[billing.stripe]`'s API settings, for top-ups.
#[derive(Debug, Clone)]
pub struct StripeCheckoutConfig {
    /// Stripe's API base URL.
    pub api_base: String,
    /// The account's secret key.
    pub secret_key: Secret,
    /// Where the payer lands after paying.
    pub success_url: String,
    /// Where the payer lands after giving up.
    pub cancel_url: String,
}

/// `[redis]`, validated.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://…` (may hold a password).
    pub url: Secret,
}

/// One scope's rate limits; `None` is no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitSet {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute.
    pub tpm: Option<u32>,
    /// Requests in flight at once.
    pub concurrency: Option<u32>,
}

/// Largest rate limit of any kind (the admin API's bound too).
pub const MAX_LIMIT: u64 = 1_000_000_000;

/// `[limits]`, validated.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// A concurrency lease's life between renewals.
    pub lease: std::time::Duration,
    /// Output tokens reserved for a request without `max_tokens`.
    pub reserve_output_tokens: u32,
    /// The same per model (the name clients use).
    pub reserve_output_tokens_by_model: BTreeMap<String, u32>,
    /// Limits of keys without their own.
    pub default_key: LimitSet,
    /// Limits of projects without their own.
    pub default_project: LimitSet,
    /// Limits of orgs without their own.
    pub default_org: LimitSet,
    /// Time between budget reconciliations from ClickHouse.
    pub reconcile: std::time::Duration,
    /// Busy keys' requests are admitted from allowances (docs/limits.md).
    pub allowances: bool,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            lease: std::time::Duration::from_secs(30),
            reserve_output_tokens: 1024,
            reserve_output_tokens_by_model: BTreeMap::new(),
            default_key: LimitSet::default(),
            default_project: LimitSet::default(),
            default_org: LimitSet::default(),
            reconcile: std::time::Duration::from_secs(30),
            allowances: true,
        }
    }
}

impl LimitsConfig {
    /// Output tokens to reserve for a request to `model` without `max_tokens`.
    pub fn reserve_output_for(&self, model: &str) -> u32 {
        self.reserve_output_tokens_by_model
            .get(model)
            .copied()
            .unwrap_or(self.reserve_output_tokens)
    }
}

/// The roles an admin token may have, from most to least powerful.
pub const ADMIN_ROLES: &[&str] = &["owner", "admin", "operator", "billing", "viewer"];

/// An admin API token from the config.
#[derive(Debug, Clone)]
pub struct AdminToken {
    /// Who it is (the audit log's actor).
    pub name: String,
    /// The bearer token.
    pub token: Secret,
    /// One of [`ADMIN_ROLES`].
    pub role: String,
    /// The org it is limited to (a UUID), if any.
    pub org_id: Option<String>,
}

/// The dialect a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI Chat Completions (OpenAI, vLLM, DeepSeek, Groq, …).
    OpenAiCompatible,
    /// Azure OpenAI: deployment URLs, `api-version`, `api-key` header.
    AzureOpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini (generateContent).
    Gemini,
    /// Cohere v2 chat.
    Cohere,
}

impl ProviderKind {
    /// The dialect's config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAiCompatible => "openai_compatible",
            ProviderKind::AzureOpenAi => "azure_openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Cohere => "cohere",
        }
    }

    /// A config `kind` (dialect or preset): its dialect and default base URL.
    pub fn preset(kind: &str) -> Option<(ProviderKind, Option<&'static str>)> {
        use ProviderKind::*;
        Some(match kind {
            "openai_compatible" => (OpenAiCompatible, None),
            "openai" => (OpenAiCompatible, Some("https://api.openai.com/v1")),
            "azure_openai" => (AzureOpenAi, None),
            "deepseek" => (OpenAiCompatible, Some("https://api.deepseek.com/v1")),
            "mistral" => (OpenAiCompatible, Some("https://api.mistral.ai/v1")),
            "groq" => (OpenAiCompatible, Some("https://api.groq.com/openai/v1")),
            "together" => (OpenAiCompatible, Some("https://api.together.xyz/v1")),
            "openrouter" => (OpenAiCompatible, Some("https://openrouter.ai/api/v1")),
            "vllm" => (OpenAiCompatible, Some("http://127.0.0.1:8000/v1")),
            "ollama" => (OpenAiCompatible, Some("http://127.0.0.1:11434/v1")),
            "anthropic" => (Anthropic, Some("https://api.anthropic.com/v1")),
            "gemini" => (
                Gemini,
                Some("https://generativelanguage.googleapis.com/v1beta"),
            ),
            "cohere" => (Cohere, Some("https://api.cohere.com/v2")),
            _ => return None,
        })
    }
}

/// Batches running at once across every dispatcher of a deployment.
pub const MAX_RUNNING_BATCHES: u32 = 32;

/// Every `kind` spelling, for error messages and docs.
pub const PROVIDER_KINDS: &str = "openai_compatible, openai, azure_openai, deepseek, mistral, groq, together, openrouter, vllm, ollama, anthropic, gemini, cohere";

/// A provider entry, validated.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Its name (a subject token).
    pub name: String,
    /// Its dialect.
    pub kind: ProviderKind,
    /// Base URL, ending without a slash.
    pub base_url: Url,
    /// The provider's key, if any (sent the dialect's way).
    pub api_key: Option<Secret>,
    /// Azure's `api-version`; Anthropic's `anthropic-version`.
    pub api_version: Option<String>,
    /// Anthropic: max_tokens when the client gave none.
    pub default_max_tokens: u32,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Cluster-wide cap on requests in flight (the consumer's max_ack_pending).
    pub max_concurrency: NonZeroU32,
    /// New requests skip this provider (or get 503) while this many wait for it.
    pub max_queue: Option<u64>,
    /// Cluster-wide cap on batch items in flight (the batch consumer's
    /// max_ack_pending), on top of `max_concurrency`; default a quarter of it, at most 64.
    pub batch_concurrency: NonZeroU32,
    /// Retries on this target after a 429, 5xx or failed connection.
    pub retries: u32,
    /// Streamed calls: longest wait for the first token (from the request,
    /// or from the headers when `header_timeout` is set).
    pub ttft_timeout: Duration,
    /// Streamed calls: longest wait for the response's headers; unset, the
    /// headers and the first token share `ttft_timeout` from the request.
    pub header_timeout: Option<Duration>,
    /// Streamed calls: longest silence between chunks.
    pub idle_timeout: Duration,
    /// Calls that are not streamed: longest wait for the answer.
    pub response_timeout: Duration,
    /// The target continues a final assistant message (assistant prefill).
    pub prefill: bool,
    /// Extra headers.
    pub headers: BTreeMap<String, String>,
    /// Prices by upstream model; a model without one has an unknown price.
    pub prices: BTreeMap<String, Price>,
    /// Facts about upstream models, for routing.
    pub models: BTreeMap<String, crate::routing::ModelInfo>,
}

/// A model clients may ask for.
#[derive(Debug, Clone)]
pub struct ModelRoute {
    /// The name clients use.
    pub name: String,
    /// Its subject token.
    pub token: String,
    /// Targets in order of preference; never empty.
    pub targets: Vec<Target>,
    /// How its requests fail over.
    pub policy: RoutePolicy,
}

/// How a model's or a router's requests fail over (docs/reliability.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Streams that fail after output: recover or end with an error.
    pub mid_stream: sy_protocol::MidStream,
    /// A content refusal falls back to the next target.
    pub fallback_on_refusal: bool,
    /// Watchdog overrides.
    pub watchdogs: sy_protocol::Watchdogs,
}

/// One provider/model pair serving a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Provider entry name.
    pub provider: String,
    /// Upstream model.
    pub model: String,
}
