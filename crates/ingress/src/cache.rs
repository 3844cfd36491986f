//! The exact response cache (issue 20; docs/cache.md): an answer stored in
//! Redis (and optionally in this process's memory in front of it) and
//! replayed, byte for byte, to the same request from the same org.
//!
//! - **On** for a request when it says `x-switchyard-cache: use` (or
//!   `refresh`), else when its project turns the cache on, else when its
//!   model or router is in `[cache] models`; `bypass` always wins.
//! - **Key**: HMAC-SHA-256 under a secret of the deployment's, over the
//!   org's id (and the project's, unless `share_across_projects`: the
//!   entry's salt, length-prefixed), the client API, the answer's shape
//!   (streamed, usage chunk, base64), the route, and the canonical request
//!   (every field but those
//!   that do not change the answer: `user`, `metadata`, `prompt_cache_key`,
//!   `safety_identifier`, `store`, `service_tier`, the stream flags). Two
//!   orgs never share an entry and no one can compute another's key.
//! - **Entry**: the exact bytes the client got (a JSON body, or the whole
//!   SSE sequence with its usage chunk and `[DONE]`) and what the usage row
//!   of a hit needs (who answered, the tokens, the cost).
//! - **Never stored**: errors, streams cut or continued by a fallback, `n` >
//!   1, `finish_reason: length` and tool calls (unless allowed), answers to
//!   a temperature above `max_temperature` (unless the request opts in with
//!   `any-temperature`), answers larger than `max_entry_bytes`.
//! - **A hit** publishes its usage row (`cache_hit`, cost 0, billed at the
//!   plan's cache-hit multiplier of what a miss would have been billed):
//!   before it answers when it is billed, right after when it is free.
//! - **Redis away**: the request is served uncached.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sy_config::CacheConfig;
use sy_limits::Limiter;
use sy_protocol::chat::ChatRequest;
use sy_protocol::{
    ApiSurface, ReplyFrame, RequestEnvelope, StartInfo, TokenSource, TokenUsage, UsageEvent,
    UsageStatus, header as hdr, now_unix_ms,
};
use sy_telemetry::metrics::Counter;

use crate::error::ApiError;
use crate::extract::Caller;

/// Fields of a request that do not change its answer: left out of the key.
const IGNORED: [&str; 5] = [
    "metadata",
    "prompt_cache_key",
    "safety_identifier",
    "store",
    "service_tier",
];

/// The longest `x-switchyard-cache` header read.
const MAX_HEADER_CHARS: usize = 200;

/// What a request's `x-switchyard-cache` header asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    /// `use`, `refresh` or `bypass`; none: the project's or model's default.
    pub mode: Option<Mode>,
    /// `max-age=<seconds>`: an older entry is not used (and is replaced).
    pub max_age_secs: Option<u64>,
    /// `ttl=<seconds>`: how long this answer is kept (at most `max_ttl`).
    pub ttl_secs: Option<u64>,
    /// `any-temperature`: store the answer whatever the temperature.
    pub any_temperature: bool,
}

/// A request's own choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Answer from the cache when it can, store the answer when it cannot.
    Use,
    /// Do not look; store the new answer over the old.
    Refresh,
    /// Neither look nor store.
    Bypass,
}

impl Directives {
    /// The header's directives, or a 400 naming what does not read.
    pub(crate) fn of(headers: &HeaderMap) -> Result<Directives, ApiError> {
        let Some(v) = headers.get(hdr::CACHE) else {
            return Ok(Directives::default());
        };
        let bad = |why: String| ApiError::invalid(hdr::CACHE, why);
        let text = v
            .to_str()
            .ok()
            .filter(|t| t.len() <= MAX_HEADER_CHARS)
            .ok_or_else(|| {
                bad(format!(
                    "{} must be at most {MAX_HEADER_CHARS} ASCII characters.",
                    hdr::CACHE
                ))
            })?;
        let mut d = Directives::default();
        let seconds = |name: &str, v: &str| {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n <= 366 * 86_400)
                .ok_or_else(|| bad(format!("'{name}' must be whole seconds, not '{v}'.")))
        };
        for part in text
            .split([',', ';'])
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let lower = part.to_ascii_lowercase();
            let mode = match lower.as_str() {
                "use" => Some(Mode::Use),
                "refresh" => Some(Mode::Refresh),
                "bypass" | "no-store" => Some(Mode::Bypass),
                "any-temperature" => {
                    d.any_temperature = true;
                    None
                }
                other => match other.split_once('=') {
                    Some(("max-age", v)) => {
                        d.max_age_secs = Some(seconds("max-age", v.trim())?);
                        None
                    }
                    Some(("ttl", v)) => {
                        d.ttl_secs = Some(seconds("ttl", v.trim())?.max(1));
                        None
                    }
                    _ => {
                        return Err(bad(format!(
                            "Unknown {} directive '{part}'; use 'use', 'refresh' or 'bypass', \
                             with 'max-age=<seconds>', 'ttl=<seconds>' or 'any-temperature'.",
                            hdr::CACHE
                        )));
                    }
                },
            };
            if let Some(m) = mode {
                if d.mode.is_some_and(|old| old != m) {
                    return Err(bad(format!(
                        "{} names more than one of 'use', 'refresh' and 'bypass'.",
                        hdr::CACHE
                    )));
                }
                d.mode = Some(m);
            }
        }
        Ok(d)
    }
}

/// What the cache does for one request.
pub(crate) enum Plan {
    /// The cache is not on for it: nothing said.
    Off,
    /// It bypasses the cache (asked to, or it cannot be cached).
    Bypass,
    /// Look (unless refreshing) and store.
    On(Ask),
}

/// A request the cache is on for.
pub(crate) struct Ask {
    key: String,
    lookup: bool,
    max_age_ms: Option<u64>,
    ttl_ms: u64,
    /// Its temperature allows storing the answer.
    temperature_ok: bool,
    images: u64,
}

/// The stored answer's facts (the entry's header; the body follows).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    created_unix_ms: u64,
    /// When it expires (also in Redis): the in-process tier keeps it no longer.
    #[serde(default)]
    expires_unix_ms: u64,
    content_type: String,
    provider: String,
    upstream_model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    served_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finish_reason: Option<String>,
    tokens: TokenUsage,
    tokens_source: TokenSource,
    /// What the original call cost at the provider's price, nano-USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cost_nanos: Option<i64>,
}

/// An entry: its facts and the bytes the client got.
#[derive(Debug)]
pub(crate) struct Entry {
    meta: Meta,
    body: Bytes,
}

/// Entries' format version (the value's first byte).
const FORMAT: u8 = 1;

impl Entry {
    /// `FORMAT`, the header's length (4 bytes, little-endian), the header as
    /// JSON, then the body.
    fn encode(&self) -> Vec<u8> {
        let meta = serde_json::to_vec(&self.meta).unwrap_or_default();
        let mut out = Vec::with_capacity(5 + meta.len() + self.body.len());
        out.push(FORMAT);
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(raw: Vec<u8>) -> Option<Entry> {
        let (&format, rest) = raw.split_first()?;
        if format != FORMAT || rest.len() < 4 {
            return None;
        }
        let len = u32::from_le_bytes(rest[..4].try_into().ok()?) as usize;
        let meta = serde_json::from_slice(rest.get(4..4 + len)?).ok()?;
        let body = Bytes::from(raw).slice(5 + len..);
        Some(Entry { meta, body })
    }
}

/// The cache of one ingress.
pub(crate) struct ResponseCache {
    config: CacheConfig,
    /// HMAC-SHA-256 keyed with the cache's secret, its pads computed once
    /// (cloned for each request's key).
    keyed: Hmac<Sha256>,
    limits: Arc<crate::ratelimit::RateLimits>,
    /// The deployment's NATS namespace: the config file's keys of two
    /// deployments sharing a Redis never share entries.
    namespace: String,
    /// `[billing] markup_percent` in ppb: an org without multipliers pays it.
    markup_ppb: i64,
    memory: Option<Memory>,
    /// Free hits' usage rows on their way to the usage stream.
    rows: HitRows,
    /// hit, miss, bypass, error.
    lookups: [Counter; 4],
}

impl ResponseCache {
    pub(crate) fn new(
        config: CacheConfig,
        secret: [u8; 32],
        limits: Arc<crate::ratelimit::RateLimits>,
        namespace: &str,
        markup_ppb: i64,
        bus: sy_bus::Bus,
    ) -> Self {
        let counter = |r: &str| {
            sy_telemetry::metrics::get()
                .cache_lookups
                .get_or_create(&[("result", r.to_owned())])
                .clone()
        };
        ResponseCache {
            memory: (config.memory_entries > 0).then(|| Memory::new(config.memory_entries)),
            config,
            keyed: mac(&secret),
            limits,
            namespace: namespace.to_owned(),
            markup_ppb,
            rows: HitRows::start(bus),
            lookups: ["hit", "miss", "bypass", "error"].map(counter),
        }
    }

    /// Stores a free hit's usage row soon after its answer (in a batch).
    pub(crate) fn record_free(&self, event: UsageEvent) {
        self.rows.record(event);
    }

    /// Waits until every free hit's row queued so far was published.
    pub(crate) async fn flush(&self) {
        self.rows.flush().await;
    }

    /// Redis, unless it is known to be away.
    fn redis(&self) -> Option<&Limiter> {
        self.limits.redis()
    }

    /// Decides what the cache does for an admitted request (and derives its
    /// key: the request's identity fields are already the org's pseudonyms,
    /// which the key leaves out anyway).
    pub(crate) fn plan(
        &self,
        d: Directives,
        caller: &Caller,
        envelope: &mut RequestEnvelope,
        route: &str,
        base64: bool,
    ) -> Plan {
        if d.mode == Some(Mode::Bypass) {
            self.lookups[2].inc();
            return Plan::Bypass;
        }
        let project = caller.grant.as_ref().and_then(|g| g.cache);
        let on = d.mode.is_some()
            || project == Some(true)
            || (project.is_none() && self.config.models.contains(&envelope.model));
        if !on {
            return Plan::Off;
        }
        // Several choices, rerank answers, images and transcripts (not kept
        // yet: their hits' rows would need the units a miss is billed) go
        // uncached.
        if envelope.request.n.is_some_and(|n| n > 1)
            || envelope.rerank.is_some()
            || envelope.images.is_some()
            || envelope.transcription.is_some()
            || envelope.speech.is_some()
        {
            self.lookups[2].inc();
            return Plan::Bypass;
        }
        let ttl = d
            .ttl_secs
            .map(std::time::Duration::from_secs)
            .unwrap_or(self.config.ttl)
            .min(self.config.max_ttl);
        let temperature_ok = d.any_temperature
            || envelope.embeddings.is_some()
            || envelope.request.temperature.unwrap_or(1.0) <= self.config.max_temperature;
        Plan::On(Ask {
            key: self.key(caller, envelope, route, base64),
            lookup: d.mode != Some(Mode::Refresh),
            max_age_ms: d.max_age_secs.map(|s| s.saturating_mul(1000)),
            ttl_ms: ttl.as_millis() as u64,
            temperature_ok,
            images: envelope.request.image_count(),
        })
    }

    /// The entry's Redis key for `envelope` asked by `caller`.
    fn key(
        &self,
        caller: &Caller,
        envelope: &mut RequestEnvelope,
        route: &str,
        base64: bool,
    ) -> String {
        let scope = match &caller.grant {
            Some(g) if self.config.share_across_projects => format!("org\0{}", g.owner.org_id),
            Some(g) => format!("project\0{}\0{}", g.owner.org_id, g.owner.project_id),
            None => format!("key\0{}\0{}", self.namespace, caller.key_id),
        };
        let mut m = self.keyed.clone();
        m.update(&(scope.len() as u32).to_le_bytes());
        m.update(scope.as_bytes());
        let surface = match envelope.api {
            ApiSurface::ChatCompletions => "chat",
            ApiSurface::Messages => "messages",
            ApiSurface::Responses => "responses",
            ApiSurface::Embeddings => "embeddings",
            ApiSurface::Rerank => "rerank",
            ApiSurface::Images => "images",
            ApiSurface::ImageEdits => "image_edits",
            ApiSurface::Transcriptions => "transcriptions",
            ApiSurface::Translations => "translations",
            ApiSurface::Speech => "speech",
        };
        let flags = [
            u8::from(envelope.request.is_stream()),
            u8::from(envelope.request.wants_stream_usage()),
            u8::from(base64),
        ];
        m.update(b"v1\0");
        m.update(surface.as_bytes());
        m.update(&flags);
        m.update(route.as_bytes());
        m.update(&[0]);
        canonical(&mut envelope.request, &mut m);
        if let Some(e) = &mut envelope.embeddings {
            let user = e.user.take();
            let _ = serde_json::to_writer(MacWriter(&mut m), &*e);
            e.user = user;
        }
        let digest = m.finalize().into_bytes();
        let mut key = String::with_capacity(sy_limits::cache::PREFIX.len() + 64);
        key.push_str(sy_limits::cache::PREFIX);
        for b in digest {
            use std::fmt::Write as _;
            let _ = write!(key, "{b:02x}");
        }
        key
    }

    /// The stored answer for `ask`, if there is one young enough; counts
    /// the lookup. Redis away or slow: none (the request goes through).
    pub(crate) async fn lookup(&self, ask: &Ask) -> Option<Arc<Entry>> {
        if !ask.lookup {
            self.lookups[1].inc();
            return None;
        }
        let fresh = |e: &Entry| {
            ask.max_age_ms
                .is_none_or(|max| now_unix_ms().saturating_sub(e.meta.created_unix_ms) <= max)
        };
        if let Some(e) = self.memory.as_ref().and_then(|m| m.get(&ask.key))
            && fresh(&e)
        {
            self.lookups[0].inc();
            return Some(e);
        }
        let Some(redis) = self.redis() else {
            self.lookups[3].inc();
            return None;
        };
        let found = match redis.cache_get(&ask.key).await {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(error = %e, "A cache lookup failed; answering uncached.");
                self.lookups[3].inc();
                return None;
            }
        };
        match found.and_then(Entry::decode) {
            Some(e) if fresh(&e) => {
                self.lookups[0].inc();
                let e = Arc::new(e);
                if let Some(m) = &self.memory {
                    m.put(&ask.key, e.clone());
                }
                Some(e)
            }
            _ => {
                self.lookups[1].inc();
                None
            }
        }
    }

    /// What records an answer to `ask` as it goes out; `start` is its first
    /// frame's.
    pub(crate) fn tap(
        self: &Arc<Self>,
        ask: &Ask,
        envelope: &RequestEnvelope,
        start: Option<&StartInfo>,
    ) -> Option<Tap> {
        let start = start?;
        // The price the answering target was billed at, for a hit's row.
        let pricing = std::iter::once((
            &envelope.provider,
            &envelope.upstream_model,
            &envelope.pricing,
        ))
        .chain(
            envelope
                .fallback
                .iter()
                .map(|t| (&t.provider, &t.upstream_model, &t.pricing)),
        )
        .find(|(p, m, _)| **p == start.provider && **m == start.upstream_model)
        .and_then(|(_, _, pricing)| pricing.as_ref())
        .and_then(|p| p.price);
        Some(Tap {
            cache: self.clone(),
            key: ask.key.clone(),
            ttl_ms: ask.ttl_ms,
            refused: (!ask.temperature_ok).then_some("temperature"),
            buf: Vec::new(),
            frames: 0,
            tool_calls: false,
            finish_reason: None,
            provider: start.provider.clone(),
            upstream_model: start.upstream_model.clone(),
            served_model: start.response.served_model.clone(),
            price: pricing,
            images: ask.images,
        })
    }

    fn stored(&self, outcome: &str) {
        sy_telemetry::metrics::get()
            .cache_stores
            .get_or_create(&[("outcome", outcome.to_owned())])
            .inc();
    }

    /// The usage row of a hit: no provider called (cost 0), billed at the
    /// org's cache-hit multiplier of what the stored answer was billed at
    /// the org's multiplier now.
    pub(crate) fn hit_event(
        &self,
        entry: &Entry,
        caller: &Caller,
        envelope: &RequestEnvelope,
        trace_id: Option<String>,
    ) -> UsageEvent {
        let now = now_unix_ms();
        let pricing = envelope.pricing.as_ref();
        // The org's multiplier for the model that made the stored answer
        // (a route's targets may be billed differently).
        let multiplier_ppb = Some(
            caller
                .grant
                .as_ref()
                .and_then(|g| g.pricing.multiplier(&entry.meta.upstream_model))
                .unwrap_or(sy_control::pricing::AT_COST_PPB + self.markup_ppb),
        );
        let hit_ppb = caller
            .grant
            .as_ref()
            .and_then(|g| g.pricing.cache_hit_ppb)
            .unwrap_or(self.config.hit_multiplier_ppb);
        let billed = match (entry.meta.cost_nanos, multiplier_ppb) {
            _ if hit_ppb == 0 => Some(0),
            (Some(cost), Some(m)) => Some(sy_config::price::scale(
                sy_config::price::scale(cost, m),
                hit_ppb,
            )),
            _ => None,
        };
        let m = &entry.meta;
        UsageEvent {
            // Attempt 0: never the id of a provider call's row, not even of
            // this request's own if the hit falls through to one.
            event_id: UsageEvent::event_id_of(envelope.request_id, 0),
            search_units: 0,
            output_images: 0,
            audio_seconds: 0,
            input_characters: 0,
            request_id: envelope.request_id,
            attempt: 0,
            received_unix_ms: envelope.received_unix_ms,
            dispatched_unix_ms: now,
            first_token_unix_ms: Some(now),
            finished_unix_ms: now,
            key_id: envelope.key_id.clone(),
            org_id: envelope.org_id.clone(),
            project_id: envelope.project_id.clone(),
            ingress_id: envelope.ingress_id.clone(),
            worker_id: String::new(),
            api: envelope.api,
            model: envelope.model.clone(),
            class: envelope.class.clone(),
            route: envelope.choice.as_ref().map(|c| c.route.clone()),
            strategy: envelope.choice.as_ref().map(|c| c.strategy.clone()),
            target_rank: None,
            provider: m.provider.clone(),
            upstream_model: m.upstream_model.clone(),
            served_model: m.served_model.clone(),
            stream: envelope.request.is_stream(),
            status: UsageStatus::Ok,
            error_code: None,
            provider_status: None,
            finish_reason: m.finish_reason.clone(),
            tokens: m.tokens,
            input_tokens_source: m.tokens_source,
            output_tokens_source: m.tokens_source,
            cost_nanos: Some(0),
            billed_nanos: billed,
            price_version: pricing.map(|p| p.version),
            multiplier_ppb,
            plan: pricing.and_then(|p| p.plan.clone()),
            queue_wait_ms: 0,
            ttft_ms: Some(now.saturating_sub(envelope.received_unix_ms)),
            latency_ms: now.saturating_sub(envelope.received_unix_ms),
            fallback_reason: None,
            client_disconnected: false,
            batch_id: None,
            limits: envelope.limits.clone(),
            trace_id,
            tags: envelope.tags.clone(),
            cache_hit: true,
            pipeline_run: None,
            pipeline_step: None,
        }
    }
}

/// How long a free hit's usage row is retried while NATS does not take it.
const RECORD_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// How long free hits' rows wait to go out together. A row stored alone
/// is a JetStream message of its own, stored and delivered by the server
/// and read by every usage consumer, and on a busy machine that chain cost
/// a hit more than its whole lookup; rows of 10 ms go out as a few
/// messages of many rows (`Switchyard-Usage-Rows`), which the ledger skips
/// unread (`Switchyard-Usage-Free`: no money in them).
const HIT_ROWS_WINDOW: std::time::Duration = std::time::Duration::from_millis(10);

/// The most rows in one batch.
const HIT_ROWS_BATCH: usize = 512;

/// The most rows in one NATS message (a usage event is at most a few kB:
/// tags and names are bounded; the server takes 1 MB).
const HIT_ROWS_PER_MESSAGE: usize = 64;

/// Rows waiting for their batch; past this, a row is stored on its own.
const HIT_ROWS_QUEUED: usize = 16_384;

enum HitRow {
    Row(Box<UsageEvent>),
    /// Answered once every row sent before it was published.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Stores free hits' usage rows off the request path, in batches (at most
/// `HIT_ROWS_WINDOW` after the answer), each row retried on its own while
/// NATS does not take it.
pub(crate) struct HitRows {
    tx: tokio::sync::mpsc::Sender<HitRow>,
    bus: sy_bus::Bus,
}

impl HitRows {
    /// Starts the task that publishes the batches (it ends once this is
    /// dropped and every row is out).
    pub(crate) fn start(bus: sy_bus::Bus) -> HitRows {
        let (tx, rx) = tokio::sync::mpsc::channel(HIT_ROWS_QUEUED);
        tokio::spawn(publish_hit_rows(bus.clone(), rx));
        HitRows { tx, bus }
    }

    /// Queues a free hit's row (stored on its own when the queue is full).
    pub(crate) fn record(&self, event: UsageEvent) {
        use tokio::sync::mpsc::error::TrySendError;
        match self.tx.try_send(HitRow::Row(Box::new(event))) {
            Ok(()) => {}
            Err(TrySendError::Full(HitRow::Row(e)) | TrySendError::Closed(HitRow::Row(e))) => {
                record_later(self.bus.clone(), *e);
            }
            Err(_) => {}
        }
    }

    /// Waits until every row queued so far was published (or handed to its
    /// own retrying task).
    pub(crate) async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(HitRow::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn publish_hit_rows(bus: sy_bus::Bus, mut rx: tokio::sync::mpsc::Receiver<HitRow>) {
    let mut got = Vec::with_capacity(HIT_ROWS_BATCH);
    let mut rows = Vec::with_capacity(HIT_ROWS_BATCH);
    let mut flushed = Vec::new();
    // The last batch was full: more are waiting, no window for them.
    let mut backlog = false;
    while rx.recv_many(&mut got, HIT_ROWS_BATCH).await > 0 {
        // The window fills while this task sleeps: a row sent meanwhile
        // wakes nothing (only a window's first row does).
        if !backlog && !got.iter().any(|m| matches!(m, HitRow::Flush(_))) {
            tokio::time::sleep(HIT_ROWS_WINDOW).await;
        }
        loop {
            for m in got.drain(..) {
                match m {
                    HitRow::Row(e) => rows.push(*e),
                    HitRow::Flush(done) => flushed.push(done),
                }
            }
            if rows.len() >= HIT_ROWS_BATCH {
                break;
            }
            match rx.try_recv() {
                Ok(m) => got.push(m),
                Err(_) => break,
            }
        }
        backlog = rows.len() >= HIT_ROWS_BATCH;
        // A few messages of many rows each, sent together, acked together;
        // one JetStream did not take is retried on its own (same id: stored
        // once).
        let messages: Vec<(String, &[UsageEvent])> = rows
            .chunks(HIT_ROWS_PER_MESSAGE)
            .map(|c| (uuid::Uuid::now_v7().simple().to_string(), c))
            .collect();
        let sent =
            futures::future::join_all(messages.iter().map(|(id, c)| bus.publish_usage_rows(id, c)))
                .await;
        for ((id, chunk), r) in messages.into_iter().zip(sent) {
            if let Err(e) = r {
                tracing::debug!(error = %e, "Storing cache hits' usage failed, retrying.");
                retry_hit_rows(bus.clone(), id, chunk.to_vec());
            }
        }
        rows.clear();
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Retries one message of free hits' rows while NATS is away; rows that
/// still cannot be stored are logged whole.
fn retry_hit_rows(bus: sy_bus::Bus, id: String, rows: Vec<UsageEvent>) {
    tokio::spawn(async move {
        let until = tokio::time::Instant::now() + RECORD_FOR;
        let mut backoff = std::time::Duration::from_millis(50);
        loop {
            tokio::time::sleep(backoff).await;
            match bus.publish_usage_rows(&id, &rows).await {
                Ok(()) => return,
                Err(e) if tokio::time::Instant::now() + backoff < until => {
                    tracing::debug!(error = %e, "Storing cache hits' usage failed, retrying.");
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::error!(error = %e, rows = ?rows, "Cache hits' usage rows could not be stored.");
                    return;
                }
            }
        }
    });
}

/// Stores one free hit's usage row off the request path, retrying while
/// NATS is away; one that still cannot be stored is logged whole.
fn record_later(bus: sy_bus::Bus, event: UsageEvent) {
    tokio::spawn(async move {
        let until = tokio::time::Instant::now() + RECORD_FOR;
        let mut backoff = std::time::Duration::from_millis(50);
        loop {
            match bus.publish_usage(&event).await {
                Ok(()) => return,
                Err(e) if tokio::time::Instant::now() + backoff < until => {
                    tracing::debug!(error = %e, "Storing a cache hit's usage failed, retrying.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::error!(error = %e, event = ?event, "A cache hit's usage row could not be stored.");
                    return;
                }
            }
        }
    });
}

/// The answer a hit replays: the stored bytes, in the stored content type.
pub(crate) fn hit_response(entry: &Entry) -> Response {
    let mut resp = Response::new(Body::from(entry.body.clone()));
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&entry.meta.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if entry.meta.content_type.starts_with("text/event-stream") {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    let age = now_unix_ms().saturating_sub(entry.meta.created_unix_ms) / 1000;
    h.insert(header::AGE, HeaderValue::from(age));
    if let Ok(v) = HeaderValue::from_str(&entry.meta.provider) {
        h.insert(hdr::PROVIDER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&entry.meta.upstream_model) {
        h.insert(hdr::MODEL, v);
    }
    h.insert(hdr::CACHE, HeaderValue::from_static("hit"));
    resp
}

/// Says on a response what the cache did (`miss`, `bypass`).
pub(crate) fn mark(resp: &mut Response, plan: &Plan) {
    let v = match plan {
        Plan::Off => return,
        Plan::Bypass => "bypass",
        Plan::On(_) => "miss",
    };
    resp.headers_mut()
        .insert(hdr::CACHE, HeaderValue::from_static(v));
}

/// Records an answer as it goes out, and stores it once it ended well.
pub(crate) struct Tap {
    cache: Arc<ResponseCache>,
    key: String,
    ttl_ms: u64,
    /// Why it will not be stored, once known.
    refused: Option<&'static str>,
    buf: Vec<u8>,
    frames: usize,
    tool_calls: bool,
    finish_reason: Option<String>,
    provider: String,
    upstream_model: String,
    served_model: Option<String>,
    price: Option<sy_protocol::price::Price>,
    images: u64,
}

impl Tap {
    /// Looks at a frame before it is encoded.
    pub(crate) fn frame(&mut self, frame: &ReplyFrame) {
        self.frames += 1;
        // A later start: a fallback continued the answer (stitched from
        // two attempts; not kept).
        if self.frames > 1 && crate::respond::start_of(frame).is_some() {
            self.refuse("incomplete");
        }
        if let ReplyFrame::Chunk(c) = frame {
            for choice in &c.choices {
                if choice.delta.tool_calls.is_some() {
                    self.tool_calls = true;
                }
                if let Some(f) = &choice.finish_reason {
                    self.finish_reason = Some(f.clone());
                }
            }
        }
    }

    /// Adds the bytes the client was sent.
    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        if self.refused.is_some() {
            return;
        }
        if self.buf.len() + bytes.len() > self.cache.config.max_entry_bytes {
            self.refuse("too_large");
            self.buf = Vec::new();
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    fn refuse(&mut self, why: &'static str) {
        if self.refused.is_none() {
            self.refused = Some(why);
        }
    }

    /// The answer ended with `last` and every byte of it went out: stores it
    /// (off the request path) unless a rule says no.
    pub(crate) fn finish(mut self, last: &ReplyFrame, content_type: &str) {
        let ReplyFrame::Final(f) = last else {
            return self.cache.stored("incomplete");
        };
        if f.error.is_some() {
            self.refuse("error");
        }
        let finish = f.finish_reason.clone().or(self.finish_reason.take());
        if let Some(why) = refusal(&self.cache.config, finish.as_deref(), self.tool_calls) {
            self.refuse(why);
        }
        if let Some(why) = self.refused {
            return self.cache.stored(why);
        }
        let (tokens, source) = match f.usage {
            Some(u) => (u, TokenSource::Provider),
            None => (TokenUsage::default(), TokenSource::None),
        };
        let units = sy_protocol::price::Units {
            search_units: 0,
            output_images: 0,
            audio_seconds: 0,
            characters: 0,
            requests: 1,
            images: self.images,
        };
        let entry = Entry {
            meta: Meta {
                created_unix_ms: now_unix_ms(),
                expires_unix_ms: now_unix_ms().saturating_add(self.ttl_ms),
                content_type: content_type.to_owned(),
                provider: std::mem::take(&mut self.provider),
                upstream_model: std::mem::take(&mut self.upstream_model),
                served_model: self.served_model.take(),
                finish_reason: finish,
                tokens,
                tokens_source: source,
                cost_nanos: self.price.map(|p| p.cost_of(&tokens, units)),
            },
            body: Bytes::from(std::mem::take(&mut self.buf)),
        };
        let (cache, key, ttl_ms) = (
            self.cache.clone(),
            std::mem::take(&mut self.key),
            self.ttl_ms,
        );
        tokio::spawn(async move {
            let value = entry.encode();
            if let Some(m) = &cache.memory {
                m.put(&key, Arc::new(entry));
            }
            let Some(redis) = cache.redis() else {
                return cache.stored("unavailable");
            };
            match redis.cache_put(&key, &value, ttl_ms).await {
                Ok(()) => cache.stored("stored"),
                Err(e) => {
                    tracing::debug!(error = %e, "Storing a cached answer failed.");
                    cache.stored("error");
                }
            }
        });
    }
}

/// Why an answer that ended with `finish` (and called tools, or not) is not
/// stored under `config`, if it is not.
fn refusal(config: &CacheConfig, finish: Option<&str>, tool_calls: bool) -> Option<&'static str> {
    match finish {
        Some("length") if !config.store_length => Some("length"),
        Some("tool_calls" | "function_call") if !config.store_tool_calls => Some("tool_calls"),
        _ if tool_calls && !config.store_tool_calls => Some("tool_calls"),
        _ => None,
    }
}

/// The request's canonical form into `m`: every field but those that do
/// not change the answer (put back after).
fn canonical(req: &mut ChatRequest, m: &mut Hmac<Sha256>) {
    let user = req.user.take();
    let stream = req.stream.take();
    let stream_options = req.stream_options.take();
    let mut aside = Vec::new();
    for f in IGNORED {
        if let Some(v) = req.extra.remove(f) {
            aside.push((f, v));
        }
    }
    let _ = serde_json::to_writer(MacWriter(m), &*req);
    for (f, v) in aside {
        req.extra.insert(f.to_owned(), v);
    }
    req.user = user;
    req.stream = stream;
    req.stream_options = stream_options;
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length")
}

/// Serialises straight into a MAC (no buffer).
struct MacWriter<'a>(&'a mut Hmac<Sha256>);

impl std::io::Write for MacWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The in-process tier: up to `cap` entries, each until it expires (the
/// oldest go first when full).
struct Memory {
    cap: usize,
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    /// Key → (its generation, the entry).
    entries: HashMap<String, (u64, Arc<Entry>)>,
    /// Keys in the order they were put, with the generation put: an older
    /// generation's place in the queue evicts nothing.
    order: VecDeque<(String, u64)>,
    generation: u64,
}

impl Memory {
    fn new(cap: usize) -> Self {
        Memory {
            cap,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &str) -> Option<Arc<Entry>> {
        let mut m = self.lock();
        let (_, entry) = m.entries.get(key)?;
        if entry.meta.expires_unix_ms > now_unix_ms() {
            return Some(entry.clone());
        }
        m.entries.remove(key);
        None
    }

    fn put(&self, key: &str, entry: Arc<Entry>) {
        let mut m = self.lock();
        m.generation += 1;
        let generation = m.generation;
        m.entries.insert(key.to_owned(), (generation, entry));
        m.order.push_back((key.to_owned(), generation));
        let MemoryInner { entries, order, .. } = &mut *m;
        while entries.len() > self.cap || order.len() > 2 * self.cap {
            let Some((old, g)) = order.pop_front() else {
                break;
            };
            if entries.get(&old).is_some_and(|(current, _)| *current == g) {
                entries.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sy_protocol::ErrorCode;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(hdr::CACHE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn directives_read_modes_ages_and_opt_ins() {
        let d = Directives::of(&headers("use, max-age=60; ttl=300, any-temperature")).unwrap();
        assert_eq!(d.mode, Some(Mode::Use));
        assert_eq!(d.max_age_secs, Some(60));
        assert_eq!(d.ttl_secs, Some(300));
        assert!(d.any_temperature);
        assert_eq!(
            Directives::of(&headers("REFRESH")).unwrap().mode,
            Some(Mode::Refresh)
        );
        assert_eq!(
            Directives::of(&HeaderMap::new()).unwrap(),
            Directives::default()
        );
    }

    #[test]
    fn directives_that_do_not_read_are_refused() {
        for bad in [
            "sometimes",
            "use, bypass",
            "max-age=soon",
            "ttl=-1",
            "max-age=",
        ] {
            let e = Directives::of(&headers(bad)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{bad}");
            assert_eq!(e.param.as_deref(), Some(hdr::CACHE), "{bad}");
        }
    }

    #[test]
    fn an_entry_reads_back_whole_and_a_foreign_value_does_not() {
        let e = Entry {
            meta: Meta {
                created_unix_ms: 7,
                expires_unix_ms: 60_007,
                content_type: "text/event-stream".into(),
                provider: "openai".into(),
                upstream_model: "gpt-4o-mini".into(),
                served_model: None,
                finish_reason: Some("stop".into()),
                tokens: TokenUsage {
                    input_tokens: 3,
                    output_tokens: 4,
                    ..TokenUsage::default()
                },
                tokens_source: TokenSource::Provider,
                cost_nanos: Some(42),
            },
            body: Bytes::from_static(b"data: {}\n\ndata: [DONE]\n\n"),
        };
        let back = Entry::decode(e.encode()).unwrap();
        assert_eq!(back.body, e.body);
        assert_eq!(back.meta.tokens, e.meta.tokens);
        assert_eq!(back.meta.cost_nanos, Some(42));
        assert!(Entry::decode(b"{\"not\":\"ours\"}".to_vec()).is_none());
        assert!(Entry::decode(vec![FORMAT, 200, 0, 0, 0, b'{']).is_none());
    }

    #[test]
    fn the_key_ignores_identities_and_stream_flags_but_not_the_prompt() {
        let mut a: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "user": "u1", "metadata": {"a": "b"}, "temperature": 0.0
        }))
        .unwrap();
        let digest = |r: &mut ChatRequest| {
            let mut m = mac(b"k");
            canonical(r, &mut m);
            m.finalize().into_bytes()
        };
        let base = digest(&mut a);
        assert_eq!(a.user.as_deref(), Some("u1"), "put back");
        assert!(a.extra.contains_key("metadata"), "put back");
        a.user = Some("u2".into());
        a.extra.remove("metadata");
        assert_eq!(digest(&mut a), base);
        a.temperature = Some(0.5);
        assert_ne!(digest(&mut a), base);
    }

    #[test]
    fn lengths_and_tool_calls_are_kept_only_when_allowed() {
        let mut c = CacheConfig {
            ttl: std::time::Duration::from_secs(60),
            max_ttl: std::time::Duration::from_secs(60),
            models: Default::default(),
            share_across_projects: false,
            max_temperature: 1.0,
            store_length: false,
            store_tool_calls: false,
            max_entry_bytes: 1024,
            hit_multiplier_ppb: 0,
            memory_entries: 0,
        };
        assert_eq!(refusal(&c, Some("stop"), false), None);
        assert_eq!(refusal(&c, None, false), None);
        assert_eq!(refusal(&c, Some("length"), false), Some("length"));
        assert_eq!(refusal(&c, Some("tool_calls"), true), Some("tool_calls"));
        assert_eq!(refusal(&c, Some("stop"), true), Some("tool_calls"));
        c.store_length = true;
        c.store_tool_calls = true;
        assert_eq!(refusal(&c, Some("length"), false), None);
        assert_eq!(refusal(&c, Some("tool_calls"), true), None);
    }

    #[test]
    fn memory_keeps_at_most_its_cap_and_drops_expired_entries() {
        let m = Memory::new(2);
        let e = |ttl_ms: u64| {
            Arc::new(Entry {
                meta: Meta {
                    created_unix_ms: 0,
                    expires_unix_ms: now_unix_ms() + ttl_ms,
                    content_type: String::new(),
                    provider: String::new(),
                    upstream_model: String::new(),
                    served_model: None,
                    finish_reason: None,
                    tokens: TokenUsage::default(),
                    tokens_source: TokenSource::None,
                    cost_nanos: None,
                },
                body: Bytes::new(),
            })
        };
        m.put("a", e(60_000));
        m.put("b", e(60_000));
        m.put("c", e(60_000));
        assert!(m.get("a").is_none(), "the oldest went");
        assert!(m.get("b").is_some() && m.get("c").is_some());
        m.put("d", e(0));
        assert!(m.get("d").is_none(), "expired");
        // A key put again is not evicted by its older place in the queue.
        let m = Memory::new(2);
        m.put("x", e(60_000));
        m.put("y", e(60_000));
        m.put("x", e(60_000));
        m.put("z", e(60_000));
        assert!(m.get("x").is_some(), "x was put again after y");
        assert!(m.get("y").is_none() && m.get("z").is_some());
    }

    /// Free hits' rows wait for their batch; a flush returns once every row
    /// queued before it is in the usage stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn free_hits_rows_are_in_the_usage_stream_once_flushed() {
        let ns = sy_test_support::unique_namespace();
        let config = sy_config::Config::from_toml(
            &format!(
                "[nats]\nurl = \"{}\"\nnamespace = \"{ns}\"\n",
                sy_test_support::nats_url()
            ),
            &sy_config::MapEnv::default(),
        )
        .unwrap();
        let client = sy_test_support::nats().await;
        let bus = sy_bus::Bus::from_client(client.clone(), &config.nats);
        bus.ensure_usage_stream(std::time::Duration::from_secs(600))
            .await
            .unwrap();
        let rows = HitRows::start(bus.clone());
        let ids: Vec<String> = (0..3)
            .map(|i| {
                let request_id = uuid::Uuid::now_v7();
                let event: UsageEvent = serde_json::from_value(serde_json::json!({
                    "event_id": UsageEvent::event_id_of(request_id, 0),
                    "request_id": request_id, "attempt": 0, "received_unix_ms": i,
                    "dispatched_unix_ms": i, "finished_unix_ms": i, "key_id": "k",
                    "ingress_id": "i", "worker_id": "", "api": "chat_completions",
                    "model": "m", "provider": "p", "upstream_model": "m", "stream": false,
                    "status": "ok", "input_tokens": 7, "cached_input_tokens": 0,
                    "cache_write_tokens": 0, "output_tokens": 5, "reasoning_tokens": 0,
                    "input_tokens_source": "provider", "output_tokens_source": "provider",
                    "queue_wait_ms": 0, "latency_ms": 0, "client_disconnected": false,
                    "cache_hit": true, "billed_nanos": 0,
                }))
                .unwrap();
                let id = event.event_id.clone();
                rows.record(event);
                id
            })
            .collect();
        rows.flush().await;
        let js = async_nats::jetstream::new(client.clone());
        let mut stream = js.get_stream(bus.subjects().usage_stream()).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        assert_eq!(
            state.messages, 1,
            "the rows are stored by the flush, together"
        );
        let m = stream.get_raw_message(state.last_sequence).await.unwrap();
        let header = |name| m.headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(header(hdr::USAGE_ROWS).as_deref(), Some("3"));
        assert_eq!(header(hdr::USAGE_FREE).as_deref(), Some("1"));
        let mut stored: Vec<String> = sy_protocol::legacy::read_usage_events(&m.payload, true)
            .map(|e| e.unwrap().event_id)
            .collect();
        stored.sort();
        let mut want = ids;
        want.sort();
        assert_eq!(stored, want);
        drop(rows);
        sy_test_support::delete_namespace(&client, &ns).await;
    }
}
