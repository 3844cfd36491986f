//! Prometheus metrics (issue 19): one registry per process, rendered by
//! `GET /metrics` in the Prometheus text format (docs/operations.md lists
//! every metric).
//!
//! Labels are bounded by construction: a route is one of the ingress's route
//! templates, a status a class (`2xx`), an error type a closed vocabulary
//! (`sy_protocol::ErrorCode::error_type`), a provider one of the config's entries, and a model one
//! of the names the config knows ([`set_vocabulary`]); anything else is
//! `other`. Never a key, tenant or user: per-tenant views come from
//! ClickHouse. So junk model names and ten thousand keys add no series.

use std::collections::HashSet;
use std::sync::{OnceLock, RwLock};

use prometheus_client::encoding::prometheus_text;
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry, Unit};

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

type Labels1 = [(&'static str, String); 1];
type Labels2 = [(&'static str, String); 2];
type Labels3 = [(&'static str, String); 3];
type Labels4 = [(&'static str, String); 4];

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// Every family as Prometheus names it, with its type: what [`render`]
    /// always lists (a family without a series yet as its `# TYPE` line
    /// alone), so dashboards and alert rules can be checked against it.
    families: Vec<(String, &'static str)>,
    /// Requests answered by the ingress: route, status class, error type.
    pub requests: Family<Labels3, Counter>,
    /// Received → response headers (for a stream: its first event), by route.
    pub response_start: Family<Labels1, Histogram>,
    /// What Switchyard added before the first frame of an answer its first
    /// attempt gave: the ingress's time from the request to that frame less
    /// the worker's time from its provider call to it; by surface and
    /// stream.
    pub added_latency: Family<Labels2, Histogram>,
    /// Tokens per attempt: operation, provider, model, token type. Labels
    /// carry the OpenTelemetry GenAI names with `_` for `.`.
    pub token_usage: Family<Labels4, Histogram>,
    /// Provider call → end of its answer: operation, provider, model, error type.
    pub request_duration: Family<Labels4, Histogram>,
    /// Provider call → first token: operation, provider, model.
    pub time_to_first_token: Family<Labels3, Histogram>,
    /// (End − first token) / (output tokens − 1): operation, provider, model.
    pub time_per_output_token: Family<Labels3, Histogram>,
    /// Attempts by provider, model, outcome (`ok`, `error`, `cancelled`,
    /// `cut_off`, `expired`) and why they were made (`first`, `retry`,
    /// `fallback`).
    pub attempts: Family<Labels4, Counter>,
    /// Requests a rate limit refused: the scope's kind (`key`, `project`,
    /// `org`, each optionally `_model`) and the limit (`requests`, `tokens`,
    /// `concurrency`).
    pub limit_refusals: Family<Labels2, Counter>,
    /// Requests admitted under limits or budgets, by how: `allowance` (from
    /// what the ingress held, no Redis call), `redis` (one script call),
    /// `local` (Redis away: this replica's share).
    pub limit_admissions: Family<Labels1, Counter>,
    /// Response cache lookups by result: `hit`, `miss`, `bypass` (the
    /// request said so, or cannot be cached), `error` (Redis did not answer:
    /// served uncached).
    pub cache_lookups: Family<Labels1, Counter>,
    /// Answers the response cache was offered, by outcome: `stored`, or why
    /// not (`error`, `length`, `tool_calls`, `temperature`, `too_large`,
    /// `incomplete`, `unavailable`).
    pub cache_stores: Family<Labels1, Counter>,
    /// Requests a budget refused: `balance` (prepaid) or the budget's period
    /// (`day`, `month`, `none`, `session`).
    pub budget_refusals: Family<Labels1, Counter>,
    /// Requests waiting for a worker, per provider (the ingress's view of
    /// the provider's JetStream consumer, read at each scrape).
    pub queue_depth: Family<Labels1, Gauge>,
    /// Requests taken by workers and not finished, per provider.
    pub in_flight: Family<Labels1, Gauge>,
    /// 1 while routers may pick a target (its breaker closed), per provider
    /// and model; 0 while it is skipped.
    pub target_healthy: Family<Labels2, Gauge>,
    /// Budgets (and prepaid balances) the reconciler found Redis's count
    /// off from the usage rows (the ledger), by `budget` (`budget`,
    /// `balance`).
    pub budget_drifts: Family<Labels1, Counter>,
    /// How far off, nano-USD, summed (either way).
    pub budget_drift_nanos: Family<Labels1, Counter>,
    /// Batches that ended, by final status.
    pub batches: Family<Labels1, Counter>,
    /// Items of ended batches, by outcome (`completed`, `failed`).
    pub batch_items: Family<Labels1, Counter>,
    /// Batches this dispatcher is running now.
    pub batches_running: Gauge,
    /// Usage rows inserted into ClickHouse.
    pub accounting_rows: Counter,
    /// ClickHouse inserts that failed (their events come back).
    pub accounting_insert_errors: Counter,
    /// An attempt's end → its row stored in ClickHouse, seconds.
    pub accounting_lag: Histogram,
    /// Usage events JetStream holds that no accounting process stored yet.
    pub accounting_pending: Gauge,
    /// Items of the batches this dispatcher runs that have not ended yet.
    pub batch_items_pending: Gauge,
    /// 1 while the process's NATS connection is up.
    pub nats_connected: Gauge,
}

fn seconds_buckets() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new([
        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
    ])
}

fn fine_seconds_buckets() -> Histogram {
    // 0.1 ms … 10 s: per-token times and the gateway's own latency.
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        10.0,
    ])
}

fn token_buckets() -> Histogram {
    // The OpenTelemetry GenAI convention's advice: 1, 4, 16, … 4^12.
    Histogram::new((0..13).map(|i| 4f64.powi(i)))
}

/// How a family is registered and what Prometheus calls it.
#[derive(Clone, Copy)]
enum Kind {
    /// Exposed as `<name>_total`.
    Counter,
    Gauge,
    Histogram,
    /// A histogram of seconds: exposed as `<name>_seconds`.
    Seconds,
}

/// Registers families and remembers each one's exposed name and type.
struct Builder {
    registry: Registry,
    families: Vec<(String, &'static str)>,
}

impl Builder {
    fn add<M: Metric + Clone>(&mut self, name: &str, help: &str, kind: Kind, metric: M) -> M {
        let (exposed, type_) = match kind {
            Kind::Counter => (format!("{name}_total"), "counter"),
            Kind::Gauge => (name.to_owned(), "gauge"),
            Kind::Histogram => (name.to_owned(), "histogram"),
            Kind::Seconds => (format!("{name}_seconds"), "histogram"),
        };
        match kind {
            Kind::Seconds => {
                self.registry
                    .register_with_unit(name, help, Unit::Seconds, metric.clone());
            }
            _ => self.registry.register(name, help, metric.clone()),
        }
        self.families.push((exposed, type_));
        metric
    }
}

impl Metrics {
    fn new() -> Metrics {
        let mut b = Builder {
            registry: Registry::default(),
            families: Vec::new(),
        };
        let requests = b.add(
            "switchyard_requests",
            "Requests answered by the ingress, by route, status class and error type",
            Kind::Counter,
            Family::<Labels3, Counter>::default(),
        );
        let response_start = b.add(
            "switchyard_response_start",
            "Request received to response headers (a stream's first event), by route",
            Kind::Seconds,
            Family::<Labels1, Histogram, fn() -> Histogram>::new_with_constructor(
                fine_seconds_buckets,
            ),
        );
        let added_latency = b.add(
            "switchyard_added_latency",
            "What Switchyard added before an answer's first frame (its time less the provider's)",
            Kind::Seconds,
            Family::<Labels2, Histogram, fn() -> Histogram>::new_with_constructor(
                fine_seconds_buckets,
            ),
        );
        let token_usage = b.add(
            "gen_ai_client_token_usage",
            "Tokens per provider call, by token type (input, output)",
            Kind::Histogram,
            Family::<Labels4, Histogram, fn() -> Histogram>::new_with_constructor(token_buckets),
        );
        let request_duration = b.add(
            "gen_ai_server_request_duration",
            "Provider call to the end of its answer",
            Kind::Seconds,
            Family::<Labels4, Histogram, fn() -> Histogram>::new_with_constructor(seconds_buckets),
        );
        let time_to_first_token = b.add(
            "gen_ai_server_time_to_first_token",
            "Provider call to its first token",
            Kind::Seconds,
            Family::<Labels3, Histogram, fn() -> Histogram>::new_with_constructor(seconds_buckets),
        );
        let time_per_output_token = b.add(
            "gen_ai_server_time_per_output_token",
            "Time per output token after the first",
            Kind::Seconds,
            Family::<Labels3, Histogram, fn() -> Histogram>::new_with_constructor(
                fine_seconds_buckets,
            ),
        );
        let attempts = b.add(
            "switchyard_attempts",
            "Provider calls by provider, model, outcome and reason (first, retry, fallback)",
            Kind::Counter,
            Family::<Labels4, Counter>::default(),
        );
        let limit_refusals = b.add(
            "switchyard_limit_refusals",
            "Requests a rate limit refused (429), by the scope's kind and the limit",
            Kind::Counter,
            Family::<Labels2, Counter>::default(),
        );
        let limit_admissions = b.add(
            "switchyard_limit_admissions",
            "Requests admitted under limits or budgets, by path (allowance, redis, local)",
            Kind::Counter,
            Family::<Labels1, Counter>::default(),
        );
        let cache_lookups = b.add(
            "switchyard_cache_lookups",
            "Response cache lookups by result (hit, miss, bypass, error)",
            Kind::Counter,
            Family::<Labels1, Counter>::default(),
        );
        let cache_stores = b.add(
            "switchyard_cache_stores",
            "Answers offered to the response cache, by outcome (stored, or why not)",
            Kind::Counter,
            Family::<Labels1, Counter>::default(),
        );
        let budget_refusals = b.add(
            "switchyard_budget_refusals",
            "Requests a budget or a prepaid balance refused (402)",
            Kind::Counter,
            Family::<Labels1, Counter>::default(),
        );
        let queue_depth = b.add(
            "switchyard_queue_depth",
            "Requests waiting for a worker, per provider",
            Kind::Gauge,
            Family::<Labels1, Gauge>::default(),
        );
        let in_flight = b.add(
            "switchyard_in_flight",
            "Requests taken by workers and not finished, per provider",
            Kind::Gauge,
            Family::<Labels1, Gauge>::default(),
        );
        let target_healthy = b.add(
            "switchyard_target_healthy",
            "1 while routers may pick the target, 0 while its breaker keeps it out",
            Kind::Gauge,
            Family::<Labels2, Gauge>::default(),
        );
        let budget_drifts = b.add(
            "switchyard_budget_drifts",
            "Budgets and prepaid balances whose Redis count the reconciler corrected",
            Kind::Counter,
            Family::<Labels1, Counter>::default(),
        );
        let budget_drift_nanos = b.add(
            "switchyard_budget_drift_nanos",
            "How far the corrected counts were off, nano-USD, either way",
            Kind::Counter,
            Family::<Labels1, Counter>::default(),
        );
        let batches = b.add(
            "switchyard_batches",
            "Batches that ended, by final status",
            Kind::Counter,
            Family::<Labels1, Counter>::default(),
        );
        let batch_items = b.add(
            "switchyard_batch_items",
            "Items of ended batches, by outcome",
            Kind::Counter,
            Family::<Labels1, Counter>::default(),
        );
        let batches_running = b.add(
            "switchyard_batches_running",
            "Batches this dispatcher is running now",
            Kind::Gauge,
            Gauge::default(),
        );
        let accounting_rows = b.add(
            "switchyard_accounting_rows",
            "Usage rows inserted into ClickHouse",
            Kind::Counter,
            Counter::default(),
        );
        let accounting_insert_errors = b.add(
            "switchyard_accounting_insert_errors",
            "ClickHouse inserts that failed (their events are delivered again)",
            Kind::Counter,
            Counter::default(),
        );
        let accounting_lag = b.add(
            "switchyard_accounting_lag",
            "An attempt's end to its usage row stored",
            Kind::Seconds,
            seconds_buckets(),
        );
        let accounting_pending = b.add(
            "switchyard_accounting_pending",
            "Usage events waiting in JetStream for ClickHouse (the accounting consumer's pending and unacknowledged), read every 5 s",
            Kind::Gauge,
            Gauge::default(),
        );
        let batch_items_pending = b.add(
            "switchyard_batch_items_pending",
            "Items of the batches this dispatcher runs that have not ended yet",
            Kind::Gauge,
            Gauge::default(),
        );
        let nats_connected = b.add(
            "switchyard_nats_connected",
            "1 while the process's NATS connection is up",
            Kind::Gauge,
            Gauge::default(),
        );
        Metrics {
            registry: b.registry,
            families: b.families,
            requests,
            response_start,
            added_latency,
            token_usage,
            request_duration,
            time_to_first_token,
            time_per_output_token,
            attempts,
            limit_refusals,
            limit_admissions,
            cache_lookups,
            cache_stores,
            budget_refusals,
            queue_depth,
            in_flight,
            target_healthy,
            budget_drifts,
            budget_drift_nanos,
            batches,
            batch_items,
            batches_running,
            accounting_rows,
            accounting_insert_errors,
            accounting_lag,
            accounting_pending,
            batch_items_pending,
            nats_connected,
        }
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Every metric in the Prometheus text format (version 0.0.4).
pub fn render() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let m = get();
    let _ = prometheus_text::encode(&mut out, &m.registry);
    for (name, kind) in &m.families {
        if !out.contains(&format!("# TYPE {name} ")) {
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        }
    }
    out
}

fn vocabulary() -> &'static RwLock<HashSet<String>> {
    static NAMES: OnceLock<RwLock<HashSet<String>>> = OnceLock::new();
    NAMES.get_or_init(Default::default)
}

/// The names a model label may take (the config's models, routers,
/// providers' models and targets); replaces the last set. Called at start
/// and when the routing table reloads.
pub fn set_vocabulary(names: impl IntoIterator<Item = String>) {
    let set: HashSet<String> = names.into_iter().collect();
    if let Ok(mut v) = vocabulary().write() {
        *v = set;
    }
}

/// `name` as a label value: itself when the config knows it, else `other`.
pub fn model_label(name: &str) -> String {
    match vocabulary().read() {
        Ok(v) if v.contains(name) => name.to_owned(),
        _ => "other".to_owned(),
    }
}

/// An HTTP status as its class (`2xx` … `5xx`).
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_models_are_other_and_the_text_names_every_metric() {
        set_vocabulary(["gpt-4o-mini".to_owned(), "auto".to_owned()]);
        assert_eq!(model_label("gpt-4o-mini"), "gpt-4o-mini");
        assert_eq!(model_label("junk-model-7"), "other");
        let m = get();
        m.requests
            .get_or_create(&[
                ("route", "/v1/chat/completions".into()),
                ("status", status_class(429).into()),
                ("error_type", "policy".into()),
            ])
            .inc();
        m.time_to_first_token
            .get_or_create(&[
                ("gen_ai_operation_name", "chat".into()),
                ("gen_ai_provider_name", "openai".into()),
                ("gen_ai_request_model", model_label("junk")),
            ])
            .observe(0.25);
        let text = render();
        assert!(
            text.contains(
                "switchyard_requests_total{route=\"/v1/chat/completions\",status=\"4xx\",error_type=\"policy\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("gen_ai_server_time_to_first_token_seconds_bucket{"),
            "{text}"
        );
        assert!(text.contains("gen_ai_request_model=\"other\""), "{text}");
        // Every family is listed, with a series or not, under the name
        // Prometheus gives it; and these are every family there is.
        const FAMILIES: &[(&str, &str)] = &[
            ("switchyard_requests_total", "counter"),
            ("switchyard_response_start_seconds", "histogram"),
            ("switchyard_added_latency_seconds", "histogram"),
            ("gen_ai_client_token_usage", "histogram"),
            ("gen_ai_server_request_duration_seconds", "histogram"),
            ("gen_ai_server_time_to_first_token_seconds", "histogram"),
            ("gen_ai_server_time_per_output_token_seconds", "histogram"),
            ("switchyard_attempts_total", "counter"),
            ("switchyard_limit_refusals_total", "counter"),
            ("switchyard_limit_admissions_total", "counter"),
            ("switchyard_cache_lookups_total", "counter"),
            ("switchyard_cache_stores_total", "counter"),
            ("switchyard_budget_refusals_total", "counter"),
            ("switchyard_queue_depth", "gauge"),
            ("switchyard_in_flight", "gauge"),
            ("switchyard_target_healthy", "gauge"),
            ("switchyard_budget_drifts_total", "counter"),
            ("switchyard_budget_drift_nanos_total", "counter"),
            ("switchyard_batches_total", "counter"),
            ("switchyard_batch_items_total", "counter"),
            ("switchyard_batches_running", "gauge"),
            ("switchyard_accounting_rows_total", "counter"),
            ("switchyard_accounting_insert_errors_total", "counter"),
            ("switchyard_accounting_lag_seconds", "histogram"),
            ("switchyard_accounting_pending", "gauge"),
            ("switchyard_batch_items_pending", "gauge"),
            ("switchyard_nats_connected", "gauge"),
        ];
        for (name, kind) in FAMILIES {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}: {text}"
            );
        }
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(types, FAMILIES.len(), "{text}");
        assert_eq!(m.families.len(), FAMILIES.len());
    }
}
