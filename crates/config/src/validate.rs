use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use sy_protocol::{is_valid_token, route_token};
use url::Url;

use crate::price::{Price, parse_nanos};
use crate::{ConfigError, ConfigErrors, RawConfig};

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
    /// The accounting consumer.
    pub accounting: AccountingConfig,
    /// Live target health.
    pub health: HealthConfig,
    /// Batch jobs.
    pub batch: BatchConfig,
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

/// The policy keys as written in `[models."<name>"]` or `[routers."<name>"]`.
pub(crate) struct RawPolicy<'a> {
    pub mid_stream: Option<&'a str>,
    pub fallback_on_refusal: bool,
    pub ttft_timeout: Option<&'a str>,
    pub idle_timeout: Option<&'a str>,
    pub response_timeout: Option<&'a str>,
}

impl RawPolicy<'_> {
    /// Validates the keys under `prefix` (e.g. `models."gpt-4o"`).
    pub(crate) fn validate(&self, prefix: &str, e: &mut Vec<ConfigError>) -> RoutePolicy {
        let mut ms = |key: &str, v: Option<&str>| {
            v.map(|t| duration(&format!("{prefix}.{key}"), t, e).as_millis() as u64)
        };
        let watchdogs = sy_protocol::Watchdogs {
            ttft_ms: ms("ttft_timeout", self.ttft_timeout),
            idle_ms: ms("idle_timeout", self.idle_timeout),
            response_ms: ms("response_timeout", self.response_timeout),
        };
        RoutePolicy {
            mid_stream: mid_stream(&format!("{prefix}.mid_stream"), self.mid_stream, e),
            fallback_on_refusal: self.fallback_on_refusal,
            watchdogs,
        }
    }
}

/// One provider/model pair serving a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Provider entry name.
    pub provider: String,
    /// Upstream model.
    pub model: String,
}

/// `mid_stream = "recover" | "error"` (default recover).
fn mid_stream(
    path: &str,
    text: Option<&str>,
    errors: &mut Vec<ConfigError>,
) -> sy_protocol::MidStream {
    match text {
        None | Some("recover") => sy_protocol::MidStream::Recover,
        Some("error") => sy_protocol::MidStream::Error,
        Some(other) => {
            errors.push(ConfigError::new(
                path,
                format!("\"{other}\": expected \"recover\" or \"error\""),
            ));
            sy_protocol::MidStream::Recover
        }
    }
}

pub(crate) fn duration(path: &str, text: &str, errors: &mut Vec<ConfigError>) -> Duration {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            errors.push(ConfigError::new(path, "must be longer than zero"));
            Duration::from_secs(1)
        }
        Err(e) => {
            errors.push(ConfigError::new(
                path,
                format!("not a duration like \"30s\": {e}"),
            ));
            Duration::from_secs(1)
        }
    }
}

impl Config {
    /// Checks everything, collecting every problem with its key path.
    pub fn validate(raw: RawConfig) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let e = &mut errors;

        let listen = raw.server.listen.parse().unwrap_or_else(|_| {
            e.push(ConfigError::new(
                "server.listen",
                "not a socket address like \"127.0.0.1:8080\"",
            ));
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });
        if raw.server.max_body_bytes == 0 {
            e.push(ConfigError::new(
                "server.max_body_bytes",
                "must be greater than zero",
            ));
        }
        let request_timeout = duration("server.request_timeout", &raw.server.request_timeout, e);
        if let Some(id) = &raw.server.ingress_id
            && !is_valid_token(id)
        {
            e.push(ConfigError::new(
                "server.ingress_id",
                "use 1-64 letters, digits, '_' or '-'",
            ));
        }
        let server = ServerConfig {
            listen,
            max_body_bytes: usize::try_from(raw.server.max_body_bytes).unwrap_or(usize::MAX),
            request_timeout,
            ingress_id: raw.server.ingress_id,
            idempotency_window: duration(
                "server.idempotency_window",
                &raw.server.idempotency_window,
                e,
            ),
            max_connections: usize::try_from(raw.server.max_connections).unwrap_or(usize::MAX),
            header_timeout: duration("server.header_timeout", &raw.server.header_timeout, e),
            body_timeout: duration("server.body_timeout", &raw.server.body_timeout, e),
            min_body_rate: raw.server.min_body_rate,
            max_body_bytes_in_flight: usize::try_from(raw.server.max_body_bytes_in_flight)
                .unwrap_or(usize::MAX),
        };
        if !(1..=1_000_000).contains(&raw.server.max_connections) {
            e.push(ConfigError::new(
                "server.max_connections",
                "must be 1 to 1000000",
            ));
        }
        for (path, d) in [
            ("server.header_timeout", server.header_timeout),
            ("server.body_timeout", server.body_timeout),
        ] {
            if d.is_zero() {
                e.push(ConfigError::new(path, "must be longer than zero"));
            }
        }
        if raw.server.min_body_rate == 0 {
            e.push(ConfigError::new(
                "server.min_body_rate",
                "must be at least 1 byte per second",
            ));
        }
        // One request of the largest size must always fit (the batch file
        // limit is checked against it with [batch]).
        if raw.server.max_body_bytes_in_flight < raw.server.max_body_bytes
            || raw.server.max_body_bytes_in_flight > u64::from(u32::MAX)
        {
            e.push(ConfigError::new(
                "server.max_body_bytes_in_flight",
                "must be at least server.max_body_bytes and at most 4294967295",
            ));
        }

        if !raw.nats.url.starts_with("nats://")
            && !raw.nats.url.starts_with("tls://")
            && Url::parse(&raw.nats.url).is_err()
        {
            e.push(ConfigError::new("nats.url", "not a NATS URL"));
        }
        if !is_valid_token(&raw.nats.namespace) {
            e.push(ConfigError::new(
                "nats.namespace",
                "use 1-64 letters, digits, '_' or '-'",
            ));
        }
        if raw.nats.max_deliver < 1 {
            e.push(ConfigError::new("nats.max_deliver", "must be at least 1"));
        }
        if raw.nats.replicas == 0 || raw.nats.replicas > 5 {
            e.push(ConfigError::new("nats.replicas", "must be 1 to 5"));
        }
        let nats = NatsConfig {
            request_max_age: duration("nats.request_max_age", &raw.nats.request_max_age, e),
            ack_wait: duration("nats.ack_wait", &raw.nats.ack_wait, e),
            publish_timeout: duration("nats.publish_timeout", &raw.nats.publish_timeout, e),
            max_deliver: raw.nats.max_deliver,
            replicas: raw.nats.replicas,
            url: raw.nats.url,
            namespace: raw.nats.namespace,
        };

        let mut keys = Vec::new();
        let mut seen_keys = HashMap::new();
        for (i, k) in raw.keys.into_iter().enumerate() {
            if k.key.len() < 8 {
                e.push(ConfigError::new(
                    format!("keys[{i}].key"),
                    "must be at least 8 characters",
                ));
            }
            if let Some(first) = seen_keys.insert(k.key.clone(), i) {
                e.push(ConfigError::new(
                    format!("keys[{i}].key"),
                    format!("same key as keys[{first}]"),
                ));
            }
            keys.push(ApiKey {
                name: k.name,
                key: Secret::new(k.key),
            });
        }

        let mut providers = BTreeMap::new();
        for (name, p) in raw.providers {
            let at = |field: &str| format!("providers.{name}.{field}");
            if !is_valid_token(&name) {
                e.push(ConfigError::new(
                    format!("providers.{name}"),
                    "a provider name must be 1-64 letters, digits, '_' or '-'",
                ));
            }
            let raw_kind = p.kind.clone();
            let (kind, default_url) = match ProviderKind::preset(&p.kind) {
                Some(k) => k,
                None => {
                    e.push(ConfigError::new(
                        at("kind"),
                        format!(
                            "unknown kind \"{}\"; expected one of {PROVIDER_KINDS}",
                            p.kind
                        ),
                    ));
                    (ProviderKind::OpenAiCompatible, None)
                }
            };
            let Some(url) = p.base_url.as_deref().or(default_url) else {
                e.push(ConfigError::new(
                    at("base_url"),
                    format!("required for kind \"{}\"", p.kind),
                ));
                continue;
            };
            let base_url = match Url::parse(url.trim_end_matches('/')) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => u,
                Ok(_) => {
                    e.push(ConfigError::new(at("base_url"), "must be http or https"));
                    continue;
                }
                Err(err) => {
                    e.push(ConfigError::new(
                        at("base_url"),
                        format!("not a URL: {err}"),
                    ));
                    continue;
                }
            };
            let api_version = match (kind, p.api_version) {
                (ProviderKind::AzureOpenAi, None) => {
                    e.push(ConfigError::new(
                        at("api_version"),
                        "required for azure_openai, e.g. \"2024-10-21\"",
                    ));
                    None
                }
                (ProviderKind::Anthropic, None) => Some("2023-06-01".to_owned()),
                (_, v) => v,
            };
            let default_max_tokens = match p.default_max_tokens {
                Some(0) => {
                    e.push(ConfigError::new(
                        at("default_max_tokens"),
                        "must be at least 1",
                    ));
                    1
                }
                Some(n) => n,
                None => 4096,
            };
            let connect_timeout = match &p.connect_timeout {
                Some(t) => duration(&at("connect_timeout"), t, e),
                None => Duration::from_secs(5),
            };
            let max_concurrency = match p.max_concurrency.map(NonZeroU32::new) {
                None => NonZeroU32::new(1024).expect("1024 is not zero"),
                Some(Some(n)) => n,
                Some(None) => {
                    e.push(ConfigError::new(
                        at("max_concurrency"),
                        "must be at least 1",
                    ));
                    NonZeroU32::MIN
                }
            };
            let timeout =
                |key: &str, v: &Option<String>, default: u64, e: &mut Vec<ConfigError>| {
                    v.as_deref()
                        .map_or(Duration::from_secs(default), |t| duration(&at(key), t, e))
                };
            let ttft_timeout = timeout("ttft_timeout", &p.ttft_timeout, 10, e);
            let header_timeout = p
                .header_timeout
                .as_deref()
                .map(|t| duration(&at("header_timeout"), t, e));
            let idle_timeout = timeout("idle_timeout", &p.idle_timeout, 10, e);
            let response_timeout = timeout("response_timeout", &p.response_timeout, 60, e);
            let retries = p.retries.unwrap_or(2);
            if retries > 10 {
                e.push(ConfigError::new(at("retries"), "must be at most 10"));
            }
            let api_key = p.api_key.filter(|k| !k.is_empty()).map(Secret::new);
            let mut prices = BTreeMap::new();
            for (model, rp) in p.prices {
                let mut field = |f: &str, v: &str| {
                    parse_nanos(v).unwrap_or_else(|| {
                        e.push(ConfigError::new(
                            format!("providers.{name}.prices.\"{model}\".{f}"),
                            "not a non-negative decimal like \"0.15\" (USD per million tokens)",
                        ));
                        0
                    })
                };
                let input = field("input", &rp.input);
                let output = field("output", &rp.output);
                let cached_input = rp
                    .cached_input
                    .as_deref()
                    .map_or(input, |v| field("cached_input", v));
                let cache_write = rp
                    .cache_write
                    .as_deref()
                    .map_or(input, |v| field("cache_write", v));
                prices.insert(
                    model,
                    Price {
                        input,
                        cached_input,
                        cache_write,
                        output,
                    },
                );
            }
            let model_facts = crate::routing::model_infos(&name, p.models, e);
            providers.insert(
                name.clone(),
                ProviderConfig {
                    name,
                    kind,
                    base_url,
                    api_key,
                    api_version,
                    default_max_tokens,
                    connect_timeout,
                    max_concurrency,
                    max_queue: p.max_queue,
                    batch_concurrency: p
                        .batch_concurrency
                        .and_then(NonZeroU32::new)
                        .unwrap_or_else(|| {
                            NonZeroU32::new((max_concurrency.get() / 4).clamp(1, 64))
                                .unwrap_or(NonZeroU32::MIN)
                        }),
                    retries: retries.min(10),
                    ttft_timeout,
                    header_timeout,
                    idle_timeout,
                    response_timeout,
                    prefill: p
                        .prefill
                        .unwrap_or(kind == ProviderKind::Anthropic || raw_kind == "vllm"),
                    headers: p.headers,
                    prices,
                    models: model_facts,
                },
            );
        }

        let mut models = BTreeMap::new();
        let mut tokens: HashMap<String, String> = HashMap::new();
        for (name, m) in raw.models {
            let token = route_token(&name);
            if name.is_empty() || name.len() > 128 {
                e.push(ConfigError::new(
                    format!("models.\"{name}\""),
                    "a model name must be 1-128 characters",
                ));
            }
            if let Some(other) = tokens.insert(token.clone(), name.clone()) {
                e.push(ConfigError::new(
                    format!("models.\"{name}\""),
                    format!("routes on the same subject token \"{token}\" as models.\"{other}\""),
                ));
            }
            if m.targets.is_empty() {
                e.push(ConfigError::new(
                    format!("models.\"{name}\".targets"),
                    "needs at least one target",
                ));
            }
            let mut targets = Vec::new();
            for (i, t) in m.targets.into_iter().enumerate() {
                if !providers.contains_key(&t.provider) {
                    e.push(ConfigError::new(
                        format!("models.\"{name}\".targets[{i}].provider"),
                        format!("no provider named \"{}\" in [providers]", t.provider),
                    ));
                }
                if t.model.is_empty() {
                    e.push(ConfigError::new(
                        format!("models.\"{name}\".targets[{i}].model"),
                        "must not be empty",
                    ));
                }
                targets.push(Target {
                    provider: t.provider,
                    model: t.model,
                });
            }
            let policy = RawPolicy {
                mid_stream: m.mid_stream.as_deref(),
                fallback_on_refusal: m.fallback_on_refusal,
                ttft_timeout: m.ttft_timeout.as_deref(),
                idle_timeout: m.idle_timeout.as_deref(),
                response_timeout: m.response_timeout.as_deref(),
            }
            .validate(&format!("models.\"{name}\""), e);
            models.insert(
                name.clone(),
                ModelRoute {
                    name,
                    token,
                    targets,
                    policy,
                },
            );
        }

        let provider_names: std::collections::HashSet<String> = providers.keys().cloned().collect();
        let routers = crate::routing::routers(raw.routers, &provider_names, e);

        let markup_ppb = parse_nanos(&raw.billing.markup_percent)
            .map(|n| n / 100)
            .unwrap_or_else(|| {
                e.push(ConfigError::new(
                    "billing.markup_percent",
                    "not a non-negative decimal like \"20\"",
                ));
                0
            });
        let clickhouse = raw.clickhouse.and_then(|c| match Url::parse(&c.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Some(ClickhouseConfig {
                url,
                database: c.database,
                user: c.user,
                password: c.password.filter(|p| !p.is_empty()).map(Secret::new),
            }),
            _ => {
                e.push(ConfigError::new(
                    "clickhouse.url",
                    "not an http(s) URL like \"http://127.0.0.1:8123\"",
                ));
                None
            }
        });
        if raw.accounting.max_rows == 0 {
            e.push(ConfigError::new(
                "accounting.max_rows",
                "must be at least 1",
            ));
        }
        let accounting = AccountingConfig {
            max_rows: raw.accounting.max_rows.max(1),
            max_wait: duration("accounting.max_wait", &raw.accounting.max_wait, e),
            usage_max_age: duration("accounting.usage_max_age", &raw.accounting.usage_max_age, e),
            ack_wait: duration("accounting.ack_wait", &raw.accounting.ack_wait, e),
        };

        if raw.health.failure_threshold == 0 {
            e.push(ConfigError::new(
                "health.failure_threshold",
                "must be at least 1",
            ));
        }
        let h = &raw.health;
        if !(h.error_rate > 0.0 && h.error_rate <= 1.0) {
            e.push(ConfigError::new(
                "health.error_rate",
                "must be above 0 and at most 1",
            ));
        }
        if !(1..=64).contains(&h.window) {
            e.push(ConfigError::new("health.window", "must be 1 to 64 calls"));
        }
        if h.min_calls == 0 || h.min_calls > h.window {
            e.push(ConfigError::new(
                "health.min_calls",
                "must be at least 1 and at most health.window",
            ));
        }
        let health = HealthConfig {
            failure_threshold: h.failure_threshold.max(1),
            cool_down: duration("health.cool_down", &h.cool_down, e),
            error_rate: h.error_rate,
            window: h.window.clamp(1, 64),
            min_calls: h.min_calls.max(1),
        };

        let b = &raw.batch;
        let price_multiplier_ppb = parse_nanos(&b.price_multiplier).unwrap_or_else(|| {
            e.push(ConfigError::new(
                "batch.price_multiplier",
                "not a non-negative decimal like \"0.5\"",
            ));
            500_000_000
        });
        if b.max_file_bytes > raw.server.max_body_bytes_in_flight {
            e.push(ConfigError::new(
                "batch.max_file_bytes",
                "must not exceed server.max_body_bytes_in_flight (an upload of the largest file must fit)",
            ));
        }
        if b.max_file_bytes == 0 || b.max_lines == 0 {
            e.push(ConfigError::new(
                "batch",
                "max_file_bytes and max_lines must be at least 1",
            ));
        }
        if !(1..=10_000).contains(&b.window) {
            e.push(ConfigError::new("batch.window", "must be 1 to 10000 items"));
        }
        if !(1..=MAX_RUNNING_BATCHES).contains(&b.max_running_per_key) {
            e.push(ConfigError::new(
                "batch.max_running_per_key",
                format!("must be 1 to {MAX_RUNNING_BATCHES} batches"),
            ));
        }
        if b.max_deliver == 0 {
            e.push(ConfigError::new("batch.max_deliver", "must be at least 1"));
        }
        let webhook_allow = b
            .webhook_allow
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let net = n
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
                net.map_err(|_| {
                    e.push(ConfigError::new(
                        format!("batch.webhook_allow[{i}]"),
                        format!("'{n}' is not a network like \"10.1.0.0/16\" or an address"),
                    ))
                })
                .ok()
            })
            .collect();
        let batch = BatchConfig {
            max_file_bytes: b.max_file_bytes.max(1),
            max_lines: b.max_lines.max(1),
            price_multiplier_ppb,
            window: b.window.clamp(1, 10_000),
            max_rate: b.max_rate,
            file_max_age: duration("batch.file_max_age", &b.file_max_age, e),
            webhook_secret: b
                .webhook_secret
                .clone()
                .filter(|s| !s.is_empty())
                .map(Secret::new),
            webhook_allow,
            max_running_per_key: b.max_running_per_key.clamp(1, MAX_RUNNING_BATCHES),
            max_deliver: b.max_deliver.max(1),
        };

        if errors.is_empty() {
            Ok(Config {
                server,
                nats,
                keys,
                providers,
                models,
                routers,
                markup_ppb,
                clickhouse,
                accounting,
                health,
                batch,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }
}
