//! What the operator console reads from the `requests` table, through the
//! admin API: traffic over time (`GET /admin/v1/overview`), the same by
//! target, recent requests found by id, key, model, status or tag
//! (`GET /admin/v1/requests`), and one request's attempts
//! (`GET /admin/v1/requests/{id}`). Every query runs on ClickHouse 18.16
//! and current releases (`quantile`, `countIf`, `intDiv`; no window
//! functions) and reads with `FINAL`, as usage does.

use serde::{Deserialize, Serialize};
use sy_config::ClickhouseConfig;

use crate::{AccountingError, client};

/// The queries (crates/accounting/sql/, checked on current ClickHouse by
/// tests/sql/chdb_check.py).
const TRAFFIC: &str = include_str!("../sql/console_traffic.sql");
const TARGETS: &str = include_str!("../sql/console_targets.sql");
const REQUESTS: &str = include_str!("../sql/console_requests.sql");

/// One time bucket of traffic (attempts: a fallback's attempts each count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct TrafficPoint {
    /// The bucket's start, Unix seconds.
    pub t: u32,
    /// Requests (attempts of one request count once).
    pub requests: u64,
    /// Attempts.
    pub attempts: u64,
    /// Attempts that did not end `ok`.
    pub failed: u64,
    /// Whole-call latency of the attempts, ms.
    pub latency_p50_ms: f64,
    /// See `latency_p50_ms`.
    pub latency_p99_ms: f64,
    /// Time to first token of the streamed attempts that had one, ms.
    pub ttft_p50_ms: Option<f64>,
    /// See `ttft_p50_ms`.
    pub ttft_p99_ms: Option<f64>,
    /// Time in the queue before a worker took the attempt, ms: what the
    /// queue hop added.
    pub queue_p50_ms: f64,
    /// See `queue_p50_ms`.
    pub queue_p99_ms: f64,
    /// Billed, USD (a decimal string).
    pub billed: String,
}

/// One target's traffic over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct TargetTraffic {
    /// The provider entry.
    pub provider: String,
    /// The upstream model.
    pub model: String,
    /// Attempts.
    pub attempts: u64,
    /// Attempts that did not end `ok`.
    pub failed: u64,
    /// Whole-call latency, ms.
    pub latency_p50_ms: f64,
    /// See `latency_p50_ms`.
    pub latency_p99_ms: f64,
    /// Billed, USD.
    pub billed: String,
}

/// One attempt of a request, as the console lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct AttemptRow {
    /// Unix seconds.
    pub ts: u32,
    /// The request.
    #[serde(with = "clickhouse::serde::uuid")]
    pub request_id: uuid::Uuid,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The key (a UUID, or a config key's name).
    pub key_id: String,
    /// Its org, if a tenant's.
    pub org_id: String,
    /// Its project.
    pub project_id: String,
    /// The client API.
    pub api: String,
    /// The model or router the client named.
    pub model: String,
    /// The class (chat).
    pub class: String,
    /// The route a router chose.
    pub route: String,
    /// Its strategy.
    pub strategy: String,
    /// The provider entry.
    pub provider: String,
    /// The upstream model.
    pub upstream_model: String,
    /// Streamed.
    pub stream: u8,
    /// `ok` or what went wrong.
    pub status: String,
    /// The error's code.
    pub error_code: String,
    /// Why this attempt is a fallback (empty for the first).
    pub fallback_reason: String,
    /// Input tokens (uncached).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost at provider prices, USD ('' when unpriced).
    pub cost: String,
    /// Billed, USD ('' when unpriced).
    pub billed: String,
    /// In the queue, ms.
    pub queue_wait_ms: u32,
    /// To the first token, ms.
    pub ttft_ms: Option<u32>,
    /// The whole call, ms.
    pub latency_ms: u32,
    /// The trace, when tracing was on.
    pub trace_id: String,
    /// Tag keys, each with the value at the same place in `tag_values`.
    pub tag_keys: Vec<String>,
    /// See `tag_keys`.
    pub tag_values: Vec<String>,
}

/// What [`recent_requests`] looks for: every filter given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFilter {
    /// Only this org's (an org-scoped admin identity's own).
    pub org_id: Option<String>,
    /// This request.
    pub request_id: Option<uuid::Uuid>,
    /// This key's.
    pub key_id: Option<String>,
    /// The model (or router) the client named.
    pub model: Option<String>,
    /// `ok`, or a failure's status.
    pub status: Option<String>,
    /// Carrying this tag with this value.
    pub tag: Option<(String, String)>,
    /// From this instant (Unix seconds).
    pub start: u32,
    /// At most this many attempts.
    pub limit: u32,
}

/// Traffic of `org_id` (everyone's when none) with `start <= ts < end`, in
/// buckets of `bucket_secs`; buckets without traffic are absent.
pub async fn traffic(
    config: &ClickhouseConfig,
    org_id: Option<&str>,
    start: u32,
    end: u32,
    bucket_secs: u32,
) -> Result<Vec<TrafficPoint>, AccountingError> {
    let sql = crate::migrate::statements(TRAFFIC, &config.database).concat();
    let (on, org) = (u8::from(org_id.is_some()), org_id.unwrap_or_default());
    Ok(client(config)
        .query(&sql)
        .bind(bucket_secs.max(1))
        .bind(bucket_secs.max(1))
        .bind(on)
        .bind(org)
        .bind(start)
        .bind(end)
        .fetch_all::<TrafficPoint>()
        .await?)
}

/// Traffic by target of `org_id` (everyone's when none) with
/// `start <= ts < end`, the busiest first.
pub async fn traffic_by_target(
    config: &ClickhouseConfig,
    org_id: Option<&str>,
    start: u32,
    end: u32,
) -> Result<Vec<TargetTraffic>, AccountingError> {
    let sql = crate::migrate::statements(TARGETS, &config.database).concat();
    let (on, org) = (u8::from(org_id.is_some()), org_id.unwrap_or_default());
    Ok(client(config)
        .query(&sql)
        .bind(on)
        .bind(org)
        .bind(start)
        .bind(end)
        .fetch_all::<TargetTraffic>()
        .await?)
}

/// The newest attempts `filter` matches, newest first.
pub async fn recent_requests(
    config: &ClickhouseConfig,
    filter: &RequestFilter,
) -> Result<Vec<AttemptRow>, AccountingError> {
    let sql = crate::migrate::statements(REQUESTS, &config.database).concat();
    let on = |f: &Option<String>| (u8::from(f.is_some()), f.clone().unwrap_or_default());
    let (org_on, org) = on(&filter.org_id);
    let (id_on, id) = (
        u8::from(filter.request_id.is_some()),
        filter.request_id.unwrap_or_default().to_string(),
    );
    let (key_on, key) = on(&filter.key_id);
    let (model_on, model) = on(&filter.model);
    let (status_on, status) = on(&filter.status);
    let (tag_on, (tag_key, tag_value)) = (
        u8::from(filter.tag.is_some()),
        filter.tag.clone().unwrap_or_default(),
    );
    Ok(client(config)
        .query(&sql)
        .bind(filter.start)
        .bind(org_on)
        .bind(org)
        .bind(id_on)
        .bind(id)
        .bind(key_on)
        .bind(key)
        .bind(model_on)
        .bind(model)
        .bind(status_on)
        .bind(status)
        .bind(tag_on)
        .bind(tag_key.as_str())
        .bind(tag_key.as_str())
        .bind(tag_value)
        .bind(filter.limit)
        .fetch_all::<AttemptRow>()
        .await?)
}
