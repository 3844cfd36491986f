use serde::Serialize;
use sy_protocol::UsageEvent;
use uuid::Uuid;

/// One row of `switchyard.requests`, in column order (RowBinary).
#[derive(Debug, Clone, Default, PartialEq, clickhouse::Row, Serialize)]
pub struct RequestRow {
    /// Received time, Unix seconds (DateTime).
    pub ts: u32,
    /// `<request>-<attempt>`.
    pub event_id: String,
    /// The request.
    #[serde(with = "clickhouse::serde::uuid")]
    pub request_id: Uuid,
    /// The attempt.
    pub attempt: u32,
    /// Received, Unix ms.
    pub received_ms: u64,
    /// Dispatched to a worker, Unix ms.
    pub dispatched_ms: u64,
    /// First token, Unix ms.
    pub first_token_ms: Option<u64>,
    /// Finished, Unix ms.
    pub finished_ms: u64,
    /// API key name.
    pub key_id: String,
    /// Organisation.
    pub org_id: String,
    /// Project.
    pub project_id: String,
    /// Ingress instance.
    pub ingress_id: String,
    /// Worker instance.
    pub worker_id: String,
    /// Client API.
    pub api: String,
    /// The model the client asked for.
    pub model: String,
    /// Request class.
    pub class: String,
    /// The smart route (empty for a named model).
    pub route: String,
    /// The route's strategy (`fixed` for a named model).
    pub strategy: String,
    /// The serving target's position in the route's list (0 when unknown).
    pub target_rank: u8,
    /// Provider entry.
    pub provider: String,
    /// Model asked of the provider.
    pub upstream_model: String,
    /// Model the provider says answered.
    pub served_model: String,
    /// Streamed (0/1).
    pub stream: u8,
    /// ok | error | cancelled | expired.
    pub status: String,
    /// ErrorCode or empty.
    pub error_code: String,
    /// Provider HTTP status or 0.
    pub provider_status: u16,
    /// Finish reason or empty.
    pub finish_reason: String,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Cached input tokens.
    pub cached_input_tokens: u64,
    /// Cache-write tokens.
    pub cache_write_tokens: u64,
    /// The 1-hour part of the cache writes.
    pub cache_write_1h_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Reasoning part of output.
    pub reasoning_tokens: u64,
    /// provider | estimated | none.
    pub input_tokens_source: String,
    /// provider | estimated | none.
    pub output_tokens_source: String,
    /// Decimal(18, 9) as its raw nano value; NULL when the price is unknown.
    pub cost: Option<i64>,
    /// Decimal(18, 9) as its raw nano value; NULL when the price is unknown.
    pub billed: Option<i64>,
    /// Queue wait, ms.
    pub queue_wait_ms: u32,
    /// Received → first token, ms.
    pub ttft_ms: Option<u32>,
    /// Received → finished, ms.
    pub latency_ms: u32,
    /// Fallback reason or empty.
    pub fallback_reason: String,
    /// Client went away (0/1).
    pub client_disconnected: u8,
    /// The batch the call ran for, or empty.
    pub batch_id: String,
    /// The price-table version it was priced under (0: the config's).
    pub price_version: u32,
    /// The org's plan, or empty.
    pub plan: String,
    /// Decimal(18, 9) as its raw nano value: billed over cost; NULL when
    /// the event does not say (an older worker's).
    pub multiplier: Option<i64>,
    /// The request's OpenTelemetry trace id, or empty.
    pub trace_id: String,
    /// The request's tags' keys, sorted, and their values in the same order.
    pub tag_keys: Vec<String>,
    pub tag_values: Vec<String>,
    /// 1: answered from the response cache.
    pub cache_hit: u8,
    /// The pipeline run this call was a step of, and the step; empty for none.
    pub pipeline_run: String,
    pub pipeline_step: String,
    /// A rerank call's search units; 0 for every other call.
    pub search_units: u64,
    /// An image generation's images; 0 for every other call.
    pub output_images: u32,
    /// A transcription's seconds of audio; 0 for every other call.
    pub audio_seconds: u32,
    /// A speech call's characters of input; 0 for every other call.
    pub input_characters: u32,
}

fn ms32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl From<&UsageEvent> for RequestRow {
    fn from(e: &UsageEvent) -> Self {
        RequestRow {
            ts: u32::try_from(e.received_unix_ms / 1000).unwrap_or(u32::MAX),
            event_id: e.event_id.clone(),
            request_id: e.request_id,
            attempt: e.attempt,
            received_ms: e.received_unix_ms,
            dispatched_ms: e.dispatched_unix_ms,
            first_token_ms: e.first_token_unix_ms,
            finished_ms: e.finished_unix_ms,
            key_id: e.key_id.clone(),
            org_id: e.org_id.clone().unwrap_or_default(),
            project_id: e.project_id.clone().unwrap_or_default(),
            ingress_id: e.ingress_id.clone(),
            worker_id: e.worker_id.clone(),
            api: serde_json::to_value(e.api)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            model: e.model.clone(),
            class: e.class.clone().unwrap_or_default(),
            route: e.route.clone().unwrap_or_default(),
            strategy: e.strategy.clone().unwrap_or_default(),
            target_rank: e.target_rank.map_or(0, |r| r.min(255) as u8),
            provider: e.provider.clone(),
            upstream_model: e.upstream_model.clone(),
            served_model: e.served_model.clone().unwrap_or_default(),
            stream: u8::from(e.stream),
            status: e.status.as_str().to_owned(),
            error_code: e
                .error_code
                .map(|c| c.as_str().to_owned())
                .unwrap_or_default(),
            provider_status: e.provider_status.unwrap_or(0),
            finish_reason: e.finish_reason.clone().unwrap_or_default(),
            input_tokens: e.tokens.input_tokens,
            cached_input_tokens: e.tokens.cached_input_tokens,
            cache_write_tokens: e.tokens.cache_write_tokens,
            cache_write_1h_tokens: e.tokens.cache_write_1h_tokens,
            output_tokens: e.tokens.output_tokens,
            reasoning_tokens: e.tokens.reasoning_tokens,
            input_tokens_source: e.input_tokens_source.as_str().to_owned(),
            output_tokens_source: e.output_tokens_source.as_str().to_owned(),
            cost: e.cost_nanos,
            billed: e.billed_nanos,
            queue_wait_ms: ms32(e.queue_wait_ms),
            ttft_ms: e.ttft_ms.map(ms32),
            latency_ms: ms32(e.latency_ms),
            fallback_reason: e.fallback_reason.clone().unwrap_or_default(),
            client_disconnected: u8::from(e.client_disconnected),
            batch_id: e.batch_id.clone().unwrap_or_default(),
            price_version: e.price_version.unwrap_or(0),
            plan: e.plan.clone().unwrap_or_default(),
            multiplier: e.multiplier_ppb,
            trace_id: e.trace_id.clone().unwrap_or_default(),
            tag_keys: e.tags.iter().map(|(k, _)| k.clone()).collect(),
            tag_values: e.tags.iter().map(|(_, v)| v.clone()).collect(),
            cache_hit: u8::from(e.cache_hit),
            pipeline_run: e.pipeline_run.clone().unwrap_or_default(),
            pipeline_step: e.pipeline_step.clone().unwrap_or_default(),
            search_units: e.search_units,
            output_images: u32::try_from(e.output_images).unwrap_or(u32::MAX),
            audio_seconds: u32::try_from(e.audio_seconds).unwrap_or(u32::MAX),
            input_characters: u32::try_from(e.input_characters).unwrap_or(u32::MAX),
        }
    }
}
