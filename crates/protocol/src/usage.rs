use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{ApiSurface, ErrorCode};

/// The tokens of one answer by class, each token in exactly one class: from
/// the provider adapter (which normalises its provider's convention) through
/// the final reply frame and the usage event to the ClickHouse row, whose
/// columns have these names. Client surfaces render it into their own shape
/// (OpenAI's `prompt_tokens` is the sum of the three input classes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Prompt tokens neither read from nor written to a provider's cache.
    #[serde(default)]
    pub input_tokens: u64,
    /// Prompt tokens read from the provider's cache.
    #[serde(default)]
    pub cached_input_tokens: u64,
    /// Prompt tokens written to the provider's cache (where billed separately).
    #[serde(default)]
    pub cache_write_tokens: u64,
    /// The part of `cache_write_tokens` kept for an hour (Anthropic's
    /// 1-hour cache, priced apart from the 5-minute one); not written when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_1h_tokens: u64,
    /// Output tokens, reasoning included.
    #[serde(default)]
    pub output_tokens: u64,
    /// The reasoning part of `output_tokens`.
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl TokenUsage {
    /// From counts in OpenAI's convention, where the prompt count includes
    /// cache reads and writes: each part is bounded by what is left of the
    /// whole, so a provider's inconsistent report never yields more tokens
    /// than it said it read (reasoning likewise within the output).
    pub fn from_prompt_total(
        prompt: u64,
        cached: u64,
        cache_write: u64,
        output: u64,
        reasoning: u64,
    ) -> Self {
        let cached = cached.min(prompt);
        let cache_write = cache_write.min(prompt - cached);
        TokenUsage {
            input_tokens: prompt - cached - cache_write,
            cached_input_tokens: cached,
            cache_write_tokens: cache_write,
            cache_write_1h_tokens: 0,
            output_tokens: output,
            reasoning_tokens: reasoning.min(output),
        }
    }

    /// The whole prompt: every input class.
    pub fn prompt_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cached_input_tokens)
            .saturating_add(self.cache_write_tokens)
    }

    /// Prompt and output.
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens().saturating_add(self.output_tokens)
    }
}

/// One attempt's accounting record, published by the worker on `<ns>.usage`
/// (stream `<NS>_USAGE`) with `Nats-Msg-Id` = [`UsageEvent::event_id`], and
/// inserted by the accounting consumer as one row of `switchyard.requests`.
///
/// Money is in nano-USD (10⁻⁹ USD) integers: exact, never floating point; the
/// table stores it as `Decimal(18, 9)`. Token classes are a [`TokenUsage`],
/// flattened into the event (and the row) under its field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// `<request id without dashes>-<attempt>`; the dedup key everywhere.
    pub event_id: String,
    /// The request.
    pub request_id: Uuid,
    /// Which attempt (1 without fallback).
    pub attempt: u32,
    /// When the ingress received the request.
    pub received_unix_ms: u64,
    /// When the worker took it from the queue.
    pub dispatched_unix_ms: u64,
    /// When the first token came back, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_unix_ms: Option<u64>,
    /// When the attempt ended.
    pub finished_unix_ms: u64,
    /// The API key's name.
    pub key_id: String,
    /// The organisation (once tenancy lands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    /// The project (once tenancy lands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// The ingress instance.
    pub ingress_id: String,
    /// The worker instance.
    pub worker_id: String,
    /// The client API.
    pub api: ApiSurface,

    /// The model the client asked for (a model or a router name).
    pub model: String,
    /// The request class (classifier or client hint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// The router's route that chose the target (none for a named model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The route's strategy (`fixed` for a named model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// The serving target's position in the route's list, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_rank: Option<u32>,
    /// The provider entry.
    pub provider: String,
    /// The upstream model asked for.
    pub upstream_model: String,
    /// The model the provider says answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_model: Option<String>,
    /// Streamed to the client.
    pub stream: bool,
    /// How the attempt ended.
    pub status: UsageStatus,
    /// The error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
    /// The provider's HTTP status, when it answered with an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_status: Option<u16>,
    /// Why choice 0 ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// The tokens by class.
    #[serde(flatten)]
    pub tokens: TokenUsage,
    /// A rerank call's search units (as the provider reported them, else
    /// estimated); 0 for every other call.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub search_units: u64,
    /// An image generation's images; 0 for every other call.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub output_images: u64,
    /// A transcription's or translation's seconds of audio (rounded up);
    /// 0 for every other call.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub audio_seconds: u64,
    /// A speech call's characters of input text; 0 for every other call.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub input_characters: u64,
    /// Where the input counts came from.
    pub input_tokens_source: TokenSource,
    /// Where the output counts came from.
    pub output_tokens_source: TokenSource,
    /// Cost at the provider's price, nano-USD; absent when the price is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_nanos: Option<i64>,
    /// What the tenant is billed, nano-USD; absent when the price is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billed_nanos: Option<i64>,
    /// The price-table version the call was priced under (0: the config
    /// file's prices); absent in events of older workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_version: Option<u32>,
    /// The multiplier billed over cost, parts per billion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier_ppb: Option<i64>,
    /// The org's plan, if it is on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Time in the queue: dispatched − received.
    pub queue_wait_ms: u64,
    /// Time to first token from dispatch, if a token came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<u64>,
    /// Received → finished.
    pub latency_ms: u64,
    /// Why this attempt is a fallback (attempt > 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// The client went away before the answer was complete.
    pub client_disconnected: bool,
    /// The batch this call ran for (billed at the batch price multiplier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// The request's token reservation, to settle (not a ClickHouse column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<crate::LimitTicket>,
    /// The request's OpenTelemetry trace (32 lowercase hex digits), when
    /// tracing is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The request's tags, sorted by key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<(String, String)>,
    /// Answered from the response cache: no provider was called (its cost
    /// is 0; it is billed at the plan's cache-hit multiplier).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_hit: bool,
    /// The pipeline run this call was a step of (docs/pipelines.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_run: Option<String>,
    /// The pipeline step's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_step: Option<String>,
}

/// The part of a [`UsageEvent`] the ledger needs to debit a prepaid org:
/// read from the same JSON, every other field skipped unparsed (a fraction
/// of a whole event's decoding, paid for every event of every org). These
/// fields kept their names in every version of the event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UsageDebit {
    /// The event's dedup key.
    pub event_id: String,
    /// What the tenant is billed, nano-USD.
    #[serde(default)]
    pub billed_nanos: Option<i64>,
    /// The request's reservation: the org and the budgets it counted under.
    #[serde(default)]
    pub limits: Option<crate::LimitTicket>,
}

impl UsageDebit {
    /// Reads the debit's fields of a usage event's JSON.
    pub fn read(bytes: &[u8]) -> serde_json::Result<UsageDebit> {
        serde_json::from_slice(bytes)
    }
}

impl UsageEvent {
    /// The event id of a request's attempt.
    pub fn event_id_of(request_id: Uuid, attempt: u32) -> String {
        format!("{}-{attempt}", request_id.as_simple())
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageStatus {
    /// Answered in full.
    Ok,
    /// Failed (see `error_code`).
    Error,
    /// The client went away; the upstream call was dropped.
    Cancelled,
    /// The deadline passed before or during the call.
    Expired,
    /// The ingress ended the client's stream with an error while the call
    /// ran (the client read too slowly, or frames were lost on the way) and
    /// the upstream call was dropped (or had just finished).
    CutOff,
}

impl UsageStatus {
    /// The snake_case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageStatus::Ok => "ok",
            UsageStatus::Error => "error",
            UsageStatus::Cancelled => "cancelled",
            UsageStatus::Expired => "expired",
            UsageStatus::CutOff => "cut_off",
        }
    }
}

/// Where a token count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// The provider reported it.
    Provider,
    /// Switchyard counted it with a tokenizer (the provider reported nothing).
    Estimated,
    /// Nothing to count (the call never reached the provider).
    None,
}

impl TokenSource {
    /// The snake_case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::Provider => "provider",
            TokenSource::Estimated => "estimated",
            TokenSource::None => "none",
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
