use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use sy_protocol::{is_valid_token, route_token};
use url::Url;

use crate::price::parse_nanos;
use crate::{
    AccountingConfig, AdminToken, ApiKey, BatchConfig, ClickhouseConfig, Config, ConfigError,
    ConfigErrors, CredentialsConfig, HealthConfig, MAX_RUNNING_BATCHES, ModelRoute, NatsConfig,
    PROVIDER_KINDS, PostgresConfig, ProviderConfig, ProviderKind, RawConfig, RoutePolicy, Secret,
    ServerConfig, Target, TenantsConfig,
};
use crate::{
    LimitSet, LimitsConfig, LogConfig, MAX_LIMIT, MetricsConfig, RedisConfig, TracingConfig,
};

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
            max_upload_bytes: usize::try_from(raw.server.max_upload_bytes).unwrap_or(usize::MAX),
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
        if raw.server.max_upload_bytes == 0 {
            e.push(ConfigError::new(
                "server.max_upload_bytes",
                "must be greater than zero",
            ));
        }

        // One server, or a cluster's seeds separated by commas.
        if raw.nats.url.split(',').any(|u| {
            let u = u.trim();
            !u.starts_with("nats://") && !u.starts_with("tls://") && Url::parse(u).is_err()
        }) {
            e.push(ConfigError::new(
                "nats.url",
                "not a NATS URL (or comma-separated URLs)",
            ));
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
            // Zero is a setting here: no retry. Longer than the request
            // stream's 120 s duplicate window, a retry could store it twice.
            publish_retry: match raw.nats.publish_retry.trim() {
                "0" | "0s" => Duration::ZERO,
                text => {
                    let d = duration("nats.publish_retry", text, e);
                    if d >= Duration::from_secs(60) {
                        e.push(ConfigError::new(
                            "nats.publish_retry",
                            "must be under 60s (the request stream drops a repeat within 120 s only)",
                        ));
                    }
                    d
                }
            },
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
            let limits = k
                .limits
                .map(|l| limit_set(e, &format!("keys[{i}].limits"), l));
            keys.push(ApiKey {
                name: k.name,
                key: Secret::new(k.key),
                limits,
            });
        }

        let mut admin_tokens = Vec::new();
        for (i, t) in raw.admin_tokens.into_iter().enumerate() {
            let at = |field: &str| format!("admin_tokens[{i}].{field}");
            if t.name.trim().is_empty() {
                e.push(ConfigError::new(at("name"), "must not be empty"));
            }
            if t.token.len() < 16 {
                e.push(ConfigError::new(
                    at("token"),
                    "must be at least 16 characters",
                ));
            }
            if seen_keys.contains_key(&t.token) {
                e.push(ConfigError::new(
                    at("token"),
                    "the same as an API key: an admin token must not be an API key",
                ));
            }
            if !crate::ADMIN_ROLES.contains(&t.role.as_str()) {
                e.push(ConfigError::new(
                    at("role"),
                    format!("must be one of {}", crate::ADMIN_ROLES.join(", ")),
                ));
            }
            if let Some(org) = &t.org_id
                && !is_uuid(org)
            {
                e.push(ConfigError::new(
                    at("org_id"),
                    "must be an org's id (a UUID)",
                ));
            }
            if admin_tokens
                .iter()
                .any(|o: &AdminToken| o.token.expose() == t.token)
            {
                e.push(ConfigError::new(
                    at("token"),
                    "the same as another admin token",
                ));
            }
            admin_tokens.push(AdminToken {
                name: t.name,
                token: Secret::new(t.token),
                role: t.role,
                org_id: t.org_id,
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
                match crate::price::from_raw(&rp) {
                    Ok(price) => {
                        prices.insert(model, price);
                    }
                    Err(fields) => {
                        for f in fields {
                            e.push(ConfigError::new(
                                format!("providers.{name}.prices.\"{model}\".{f}"),
                                "not a non-negative decimal like \"0.15\" (USD per million tokens, or per request or image)",
                            ));
                        }
                    }
                }
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

        let routers = crate::routing::routers(raw.routers, &providers, e);

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
        let has_postgres = raw.postgres.is_some();
        let postgres = raw.postgres.and_then(|p| match Url::parse(&p.url) {
            Ok(url) if matches!(url.scheme(), "postgres" | "postgresql") && url.has_host() => {
                Some(PostgresConfig {
                    url: Secret::new(p.url),
                })
            }
            _ => {
                e.push(ConfigError::new(
                    "postgres.url",
                    "not a PostgreSQL URL like \"postgres://user:password@127.0.0.1:5432/switchyard\"",
                ));
                None
            }
        });
        let redis = raw.redis.and_then(|r| match Url::parse(&r.url) {
            // TCP (`redis://`, `rediss://`), or a Unix socket on this machine
            // (`redis+unix:///run/redis.sock`, `unix://…`).
            Ok(url)
                if (matches!(url.scheme(), "redis" | "rediss") && url.has_host())
                    || (matches!(url.scheme(), "redis+unix" | "unix")
                        && url.path().len() > 1) =>
            {
                Some(RedisConfig {
                    url: Secret::new(r.url),
                })
            }
            _ => {
                e.push(ConfigError::new(
                    "redis.url",
                    "not a Redis URL like \"redis://127.0.0.1:6379\" or \"redis+unix:///run/redis.sock\"",
                ));
                None
            }
        });
        let limits = limits_config(e, raw.limits, redis.is_some(), &keys);
        let known = |name: &str| models.contains_key(name) || routers.contains_key(name);
        let cache = crate::cache::cache_config(e, raw.cache, redis.is_some(), &known);
        let pipelines = crate::pipeline::validate(e, raw.pipelines, &known);
        let billing = billing_config(e, raw.billing, has_postgres && raw.tenants.is_some());
        let tenants = raw.tenants.and_then(|t| {
            let mut ok = true;
            if t.key_pepper.len() < 32 {
                ok = false;
                e.push(ConfigError::new(
                    "tenants.key_pepper",
                    "must have at least 32 bytes (e.g. the output of `openssl rand -base64 48`)",
                ));
            }
            if t.key_env.is_empty()
                || t.key_env.len() > 8
                || !t.key_env.bytes().all(|b| b.is_ascii_lowercase())
                || t.key_env == "admin"
            {
                ok = false;
                e.push(ConfigError::new(
                    "tenants.key_env",
                    "must be 1 to 8 lowercase letters, like \"live\" or \"test\" (not \"admin\": admin tokens' own)",
                ));
            }
            if t.resync_seconds == 0 {
                ok = false;
                e.push(ConfigError::new(
                    "tenants.resync_seconds",
                    "must be at least 1",
                ));
            }
            if !has_postgres {
                ok = false;
                e.push(ConfigError::new(
                    "tenants",
                    "needs [postgres]: tenants' keys live in the control plane's database",
                ));
            }
            ok.then(|| TenantsConfig {
                key_pepper: Secret::new(t.key_pepper),
                key_env: t.key_env,
                resync: std::time::Duration::from_secs(t.resync_seconds),
            })
        });
        let credentials = raw.credentials.and_then(|c| {
            let mut ok = true;
            let text = match (c.master_key, c.master_key_file) {
                (Some(k), None) => Some(k),
                (None, Some(path)) => match std::fs::read_to_string(&path) {
                    Ok(k) => Some(k.trim().to_owned()),
                    Err(err) => {
                        e.push(ConfigError::new(
                            "credentials.master_key_file",
                            format!("cannot read {path}: {err}"),
                        ));
                        None
                    }
                },
                _ => {
                    e.push(ConfigError::new(
                        "credentials",
                        "set exactly one of master_key and master_key_file",
                    ));
                    None
                }
            };
            if let Some(t) = &text
                && !is_master_key(t)
            {
                ok = false;
                e.push(ConfigError::new(
                    "credentials.master_key",
                    "must be 32 bytes as 64 hex digits or base64 (e.g. `openssl rand -base64 32`)",
                ));
            }
            if c.master_key_version < 1 {
                ok = false;
                e.push(ConfigError::new(
                    "credentials.master_key_version",
                    "must be at least 1",
                ));
            }
            let mut previous = Vec::new();
            for (v, k) in c.previous_master_keys {
                match v.parse::<i32>() {
                    Ok(n) if n >= 1 && n != c.master_key_version && is_master_key(&k) => {
                        previous.push((n, Secret::new(k)));
                    }
                    _ => {
                        ok = false;
                        e.push(ConfigError::new(
                            format!("credentials.previous_master_keys.{v}"),
                            "must be a version (a number other than the current one) of a 32-byte key",
                        ));
                    }
                }
            }
            if !has_postgres {
                ok = false;
                e.push(ConfigError::new(
                    "credentials",
                    "needs [postgres]: credentials live in the control plane's database",
                ));
            }
            let text = text?;
            ok.then(|| CredentialsConfig {
                current: (c.master_key_version, Secret::new(text)),
                previous,
            })
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
        let webhook_allow =
            networks(e, "batch.webhook_allow", &b.webhook_allow).unwrap_or_default();
        let metrics = MetricsConfig {
            listen: raw.metrics.listen.as_deref().and_then(|l| {
                l.parse()
                    .map_err(|_| {
                        e.push(ConfigError::new(
                            "metrics.listen",
                            "must be an address and port like 127.0.0.1:9464",
                        ));
                    })
                    .ok()
            }),
            token: match raw.metrics.token.as_deref() {
                None | Some("") => None,
                Some(t) if t.len() < 16 => {
                    e.push(ConfigError::new(
                        "metrics.token",
                        "must be at least 16 characters (or left out)",
                    ));
                    None
                }
                Some(t) => Some(Secret::new(t.to_owned())),
            },
        };
        let tracing = tracing_config(e, &raw.tracing);
        let log = LogConfig {
            json: match raw.log.format.as_deref() {
                None | Some("text") => false,
                Some("json") => true,
                Some(_) => {
                    e.push(ConfigError::new("log.format", "must be text or json"));
                    false
                }
            },
            level: raw.log.level.clone().filter(|l| !l.trim().is_empty()),
        };
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
                admin_tokens,
                providers,
                models,
                routers,
                markup_ppb,
                clickhouse,
                postgres,
                tenants,
                redis,
                billing,
                limits,
                cache,
                pipelines,
                credentials,
                accounting,
                health,
                batch,
                metrics,
                tracing,
                log,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// `[tracing]`, checked: an endpoint is an http(s) URL, the protocol one
/// Switchyard exports with (gRPC is not built in), the ratio within 0 to 1.
fn tracing_config(e: &mut Vec<ConfigError>, t: &crate::RawTracing) -> TracingConfig {
    let endpoint = t.endpoint.clone().filter(|u| !u.is_empty());
    if let Some(u) = &endpoint
        && !Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
    {
        e.push(ConfigError::new(
            "tracing.endpoint",
            "must be an http(s) URL like http://127.0.0.1:4318/v1/traces",
        ));
    }
    if let Some(p) = &t.protocol
        && !crate::TRACE_PROTOCOLS.contains(&p.as_str())
    {
        e.push(ConfigError::new(
            "tracing.protocol",
            "must be http/protobuf or http/json (gRPC is not built in)",
        ));
    }
    let viewer_url = t.viewer_url.clone().filter(|u| !u.is_empty());
    if let Some(u) = &viewer_url
        && (!u.contains("{trace_id}")
            || !Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https")))
    {
        e.push(ConfigError::new(
            "tracing.viewer_url",
            "must be an http(s) URL with {trace_id}, like http://127.0.0.1:16686/trace/{trace_id}",
        ));
    }
    let sample_ratio = t.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        e.push(ConfigError::new("tracing.sample_ratio", "must be 0 to 1"));
    }
    TracingConfig {
        enabled: t.enabled,
        endpoint,
        protocol: t.protocol.clone(),
        sample_ratio: sample_ratio.clamp(0.0, 1.0),
        record_content: t.record_content,
        service_name: t.service_name.clone().filter(|s| !s.is_empty()),
        viewer_url,
    }
}

/// `[billing]`, checked: Stripe's webhooks need a secret and the control
/// plane (`[postgres]` and `[tenants]`: orders and events are kept there).
fn billing_config(
    e: &mut Vec<ConfigError>,
    raw: crate::raw::RawBilling,
    has_control_plane: bool,
) -> crate::BillingConfig {
    let mut exchange_rates = std::collections::BTreeMap::new();
    for (code, rate) in raw.exchange_rates {
        let at = format!("billing.exchange_rates.{code}");
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_lowercase()) || code == "usd" {
            e.push(ConfigError::new(
                at,
                "a lowercase ISO 4217 code other than usd (e.g. rub)",
            ));
            continue;
        }
        match parse_nanos(&rate).filter(|n| *n > 0) {
            Some(n) => {
                exchange_rates.insert(code, n);
            }
            None => e.push(ConfigError::new(
                at,
                "USD per unit, a positive decimal string like \"0.0125\"",
            )),
        }
    }
    let yookassa = raw
        .yookassa
        .and_then(|y| yookassa_config(e, y, has_control_plane));
    let stripe = raw
        .stripe
        .and_then(|s| stripe_config(e, s, has_control_plane));
    crate::BillingConfig {
        stripe,
        yookassa,
        exchange_rates,
    }
}

/// Networks like `"10.0.0.0/8"` or single addresses; an error at `at[i]`.
fn networks(e: &mut Vec<ConfigError>, at: &str, list: &[String]) -> Option<Vec<ipnet::IpNet>> {
    let mut ok = true;
    let nets = list
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let net = n
                .parse::<ipnet::IpNet>()
                .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            net.map_err(|_| {
                ok = false;
                e.push(ConfigError::new(
                    format!("{at}[{i}]"),
                    format!("'{n}' is not a network like \"10.1.0.0/16\" or an address"),
                ))
            })
            .ok()
        })
        .collect();
    ok.then_some(nets)
}

/// `[billing.yookassa]`, checked: a shop, a secret, URLs, sender networks.
fn yookassa_config(
    e: &mut Vec<ConfigError>,
    y: crate::raw::RawYookassa,
    has_control_plane: bool,
) -> Option<crate::YookassaConfig> {
    let mut ok = true;
    if !has_control_plane {
        ok = false;
        e.push(ConfigError::new(
            "billing.yookassa",
            "needs [postgres] and [tenants] (orders and payment events are kept there)",
        ));
    }
    for (field, v) in [("shop_id", &y.shop_id), ("secret_key", &y.secret_key)] {
        if v.is_empty() {
            ok = false;
            e.push(ConfigError::new(
                format!("billing.yookassa.{field}"),
                "required (e.g. \"${YOOKASSA_SECRET_KEY}\")",
            ));
        }
    }
    let api_base = y
        .api_base
        .unwrap_or_else(|| "https://api.yookassa.ru".to_owned());
    let return_url = y
        .return_url
        .unwrap_or_else(|| "https://example.com/billing/done".to_owned());
    for (field, u) in [("api_base", &api_base), ("return_url", &return_url)] {
        if !http_url(u) {
            ok = false;
            e.push(ConfigError::new(
                format!("billing.yookassa.{field}"),
                "an http:// or https:// URL",
            ));
        }
    }
    let ips = y.notification_ips.unwrap_or_else(|| {
        crate::YOOKASSA_NOTIFICATION_RANGES
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    });
    if ips.is_empty() {
        ok = false;
        e.push(ConfigError::new(
            "billing.yookassa.notification_ips",
            "at least one network (YooKassa's published ranges by default)",
        ));
    }
    let notification_ips = networks(e, "billing.yookassa.notification_ips", &ips);
    let trusted_proxies = networks(e, "billing.yookassa.trusted_proxies", &y.trusted_proxies);
    // A network as wide as a whole address family lets anyone send (or
    // claim to forward) a notification: never what is meant.
    for (field, nets) in [
        ("notification_ips", &notification_ips),
        ("trusted_proxies", &trusted_proxies),
    ] {
        if let Some(i) = nets.iter().flatten().position(|n| n.prefix_len() < 8) {
            ok = false;
            e.push(ConfigError::new(
                format!("billing.yookassa.{field}[{i}]"),
                "too wide (fewer than 8 prefix bits): list the sender's or the proxy's own networks",
            ));
        }
    }
    let (Some(notification_ips), Some(trusted_proxies), true) =
        (notification_ips, trusted_proxies, ok)
    else {
        return None;
    };
    Some(crate::YookassaConfig {
        api_base,
        shop_id: y.shop_id,
        secret_key: Secret::new(y.secret_key),
        return_url,
        notification_ips,
        trusted_proxies,
    })
}

/// An http:// or https:// URL.
fn http_url(u: &str) -> bool {
    Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

/// `[billing.stripe]`, checked.
fn stripe_config(
    e: &mut Vec<ConfigError>,
    stripe: crate::raw::RawStripe,
    has_control_plane: bool,
) -> Option<crate::StripeConfig> {
    let mut ok = true;
    if stripe.webhook_secrets.is_empty() || stripe.webhook_secrets.iter().any(|s| s.len() < 16) {
        ok = false;
        e.push(ConfigError::new(
            "billing.stripe.webhook_secrets",
            "one or two of the endpoint's signing secrets (whsec_…), each at least 16 characters",
        ));
    }
    let tolerance = stripe.tolerance_seconds.unwrap_or(300);
    if !(1..=3600).contains(&tolerance) {
        ok = false;
        e.push(ConfigError::new(
            "billing.stripe.tolerance_seconds",
            "between 1 and 3600",
        ));
    }
    if !has_control_plane {
        ok = false;
        e.push(ConfigError::new(
            "billing.stripe",
            "needs [postgres] and [tenants] (orders and payment events are kept there)",
        ));
    }
    let api_base = stripe
        .api_base
        .unwrap_or_else(|| "https://api.stripe.com".to_owned());
    let success_url = stripe
        .success_url
        .unwrap_or_else(|| "https://example.com/billing/done".to_owned());
    let cancel_url = stripe.cancel_url.unwrap_or_else(|| success_url.clone());
    for (field, u) in [
        ("api_base", &api_base),
        ("success_url", &success_url),
        ("cancel_url", &cancel_url),
    ] {
        if !http_url(u) {
            ok = false;
            e.push(ConfigError::new(
                format!("billing.stripe.{field}"),
                "an http:// or https:// URL",
            ));
        }
    }
    let checkout = stripe.secret_key.map(|key| crate::StripeCheckoutConfig {
        api_base,
        secret_key: Secret::new(key),
        success_url,
        cancel_url,
    });
    ok.then(|| crate::StripeConfig {
        webhook_secrets: stripe
            .webhook_secrets
            .into_iter()
            .map(Secret::new)
            .collect(),
        tolerance: std::time::Duration::from_secs(tolerance),
        checkout,
    })
}

/// One scope's limits, each within 1..=[`MAX_LIMIT`].
fn limit_set(e: &mut Vec<ConfigError>, at: &str, l: crate::raw::RawLimitSet) -> LimitSet {
    let mut one = |kind: &str, v: Option<u64>| {
        v.and_then(|v| match u32::try_from(v) {
            Ok(n) if (1..=MAX_LIMIT).contains(&v) => Some(n),
            _ => {
                e.push(ConfigError::new(
                    format!("{at}.{kind}"),
                    format!("must be from 1 to {MAX_LIMIT} (leave it out for no limit)"),
                ));
                None
            }
        })
    };
    LimitSet {
        rpm: one("rpm", l.rpm),
        tpm: one("tpm", l.tpm),
        concurrency: one("concurrency", l.concurrency),
    }
}

/// `[limits]`, checked; limits anywhere in the file need `[redis]`.
fn limits_config(
    e: &mut Vec<ConfigError>,
    raw: crate::raw::RawLimits,
    has_redis: bool,
    keys: &[ApiKey],
) -> LimitsConfig {
    let mut tokens = |at: &str, v: u64| match u32::try_from(v) {
        Ok(n) if (1..=MAX_LIMIT).contains(&v) => n,
        _ => {
            e.push(ConfigError::new(
                at.to_owned(),
                format!("must be from 1 to {MAX_LIMIT}"),
            ));
            1
        }
    };
    let reserve_output_tokens = tokens("limits.reserve_output_tokens", raw.reserve_output_tokens);
    let reserve_output_tokens_by_model = raw
        .reserve_output_tokens_by_model
        .into_iter()
        .map(|(m, v)| {
            let n = tokens(&format!("limits.reserve_output_tokens_by_model.{m}"), v);
            (m, n)
        })
        .collect();
    if raw.reconcile_seconds == 0 || raw.reconcile_seconds > 86_400 {
        e.push(ConfigError::new(
            "limits.reconcile_seconds",
            "must be from 1 to 86400",
        ));
    }
    if raw.lease_seconds == 0 || raw.lease_seconds > 3600 {
        e.push(ConfigError::new(
            "limits.lease_seconds",
            "must be from 1 to 3600",
        ));
    }
    let d = raw.defaults;
    let mut default = |kind: &str, l: Option<crate::raw::RawLimitSet>| {
        l.map(|l| limit_set(e, &format!("limits.defaults.{kind}"), l))
            .unwrap_or_default()
    };
    let config = LimitsConfig {
        lease: std::time::Duration::from_secs(raw.lease_seconds.clamp(1, 3600)),
        reserve_output_tokens,
        reserve_output_tokens_by_model,
        default_key: default("key", d.key),
        default_project: default("project", d.project),
        default_org: default("org", d.org),
        reconcile: std::time::Duration::from_secs(raw.reconcile_seconds.clamp(1, 86_400)),
        allowances: raw.allowances,
    };
    let none = LimitSet::default();
    let any_limit = [
        config.default_key,
        config.default_project,
        config.default_org,
    ]
    .iter()
    .any(|l| *l != none)
        || keys.iter().any(|k| k.limits.is_some_and(|l| l != none));
    if any_limit && !has_redis {
        e.push(ConfigError::new(
            "limits",
            "rate limits need [redis]: every ingress replica counts them there",
        ));
    }
    config
}

/// Whether `s` is a UUID in its usual hyphenated form.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Whether `s` is 32 bytes written as 64 hex digits or as base64.
fn is_master_key(s: &str) -> bool {
    use base64::Engine;
    let s = s.trim();
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        || base64::engine::general_purpose::STANDARD
            .decode(s)
            .is_ok_and(|b| b.len() == 32)
}
