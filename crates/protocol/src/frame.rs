use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ErrorCode;
use crate::chat::{ChatRequest, ChoiceDelta};
use crate::usage::TokenUsage;

/// Which client API a request came in on; decides the reply's wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiSurface {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/messages` (Anthropic Messages).
    Messages,
    /// `POST /v1/responses` (OpenAI Responses).
    Responses,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/rerank` (Cohere's and Jina's shape; also `/v2/rerank`).
    Rerank,
    /// `POST /v1/images/generations`.
    Images,
    /// `POST /v1/images/edits` (multipart).
    ImageEdits,
    /// `POST /v1/audio/transcriptions` (multipart).
    Transcriptions,
    /// `POST /v1/audio/translations` (multipart).
    Translations,
    /// `POST /v1/audio/speech` (audio bytes streamed back).
    Speech,
}

/// The fields of a [`RequestEnvelope`] a worker needs to answer it, read from
/// an envelope that does not parse whole: the rest is skipped without nesting
/// limits, so whoever waits (a client on `reply_to`, a batch) still gets an error.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EnvelopeHead {
    /// The request's id.
    pub request_id: Uuid,
    /// Where the frames go (empty for a batch item).
    #[serde(default)]
    pub reply_to: String,
    /// The batch item, if it is one.
    #[serde(default)]
    pub batch: Option<crate::batch::BatchItem>,
}

/// A request on its way from the ingress to a worker pool, published to
/// `<ns>.req.<provider>.<model token>` (the requested model) on the request
/// stream with `Nats-Msg-Id` = request id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    /// UUIDv7, also the response's `x-switchyard-request-id`.
    pub request_id: Uuid,
    /// 1 for the first call; every further call (a retry on the same target or
    /// a fallback) counts up. Each attempt is one usage row.
    pub attempt: u32,
    /// The ingress instance waiting for the reply.
    pub ingress_id: String,
    /// Core NATS subject for the reply frames.
    pub reply_to: String,
    /// When the ingress received the request.
    pub received_unix_ms: u64,
    /// After this instant nobody waits for the answer: workers drop the request.
    pub deadline_unix_ms: u64,
    /// The API key: its id for a tenant's key (a UUID), its name for a key
    /// from the config file.
    pub key_id: String,
    /// The key's org (none for a key from the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    /// The key's project (none for a key from the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// The client API the request came in on.
    pub api: ApiSurface,
    /// The model the client asked for (a model or a router name): the
    /// request body's `model`, also the subject's last token.
    pub model: String,
    /// The provider entry (config name) this attempt targets.
    pub provider: String,
    /// The upstream model to ask the provider for.
    pub upstream_model: String,
    /// The client's request, validated. For embeddings it carries only the model
    /// (and no messages); the input is in `embeddings`.
    pub request: ChatRequest,
    /// An embeddings request (`api` = embeddings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<crate::embeddings::EmbeddingsRequest>,
    /// A rerank request (`api` = rerank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerank: Option<crate::rerank::RerankRequest>,
    /// An image generation request (`api` = images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<crate::images::ImagesRequest>,
    /// A transcription or translation (`api` = transcriptions,
    /// translations); its audio is in the blob store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcription: Option<crate::audio::TranscriptionRequest>,
    /// A text-to-speech request (`api` = speech).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speech: Option<crate::audio::SpeechRequest>,
    /// The request class (classifier or client hint); none for embeddings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// How the target was chosen: the smart route, strategy and rank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice: Option<RouteChoice>,
    /// Targets to try next, in order, when this one fails before any output
    /// reached the client. The worker republishes the envelope to the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<FallbackTarget>,
    /// Why the previous target gave up (set on a fallback's envelope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// What to do when a stream fails after output reached the client.
    #[serde(default, skip_serializing_if = "MidStream::is_recover")]
    pub mid_stream: MidStream,
    /// Set when this attempt continues a stream another target started: the
    /// client already has `text` in frames up to `seq` − 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resume>,
    /// The route lets a content refusal fall back to the next target.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallback_on_refusal: bool,
    /// The route's watchdog limits, overriding the targets' own.
    #[serde(default, skip_serializing_if = "Watchdogs::is_empty")]
    pub watchdogs: Watchdogs,
    /// Set on a batch item: its answer is stored on the batch's result subject
    /// (not sent to `reply_to`), and it travels on the batch request stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<crate::batch::BatchItem>,
    /// The tokens this request reserved from its token-per-minute limits, for
    /// the accounting consumer to settle to what it really used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitTicket>,
    /// What this attempt's target is billed at (none from an older ingress:
    /// the worker's config prices and markup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
    /// The client's tags (`x-switchyard-tags`, `metadata`), sorted by key;
    /// every attempt's usage row carries them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<(String, String)>,
    /// The pipeline run and step this request is (docs/pipelines.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineStep>,
    /// The client asked where its request's time went
    /// (`x-switchyard-timing: stages`): the worker says what it spent in the
    /// first frame's [`StartInfo::stages`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timing: bool,
}

/// What a request reserved from token limits and budgets at admission:
/// settled to the tokens really used and the cost really billed when its
/// usage events are consumed (once per request for the reservation, once per
/// attempt for what the attempt used).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitTicket {
    /// The org the request counted under (its keys' hash slot).
    pub org: String,
    /// Tokens reserved in every bucket below.
    pub reserved_tokens: u32,
    /// The token buckets debited: each scope's Redis key prefix and its
    /// tokens-per-minute limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<(String, u32)>,
    /// The budgets the request's largest cost was reserved from: each one's
    /// Redis key and period (0 none, 1 UTC day, 2 UTC month).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<(String, u8)>,
    /// The allowance the request's money was drawn from (its reservation id
    /// in Redis) and how much, nano-USD; none when it reserved for itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowance: Option<(String, i64)>,
}

/// A step of a pipeline run: every attempt's usage row names both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineStep {
    /// The run's id (a UUID).
    pub run_id: String,
    /// The step's name.
    pub step: String,
}

/// Watchdog limits in milliseconds; unset ones are the target's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watchdogs {
    /// Streamed calls: first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<u64>,
    /// Streamed calls: silence between chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// Calls that are not streamed: the whole answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_ms: Option<u64>,
}

impl Watchdogs {
    /// Nothing overridden.
    pub fn is_empty(&self) -> bool {
        *self == Watchdogs::default()
    }
}

/// A route's choice for streams that fail after output reached the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MidStream {
    /// Continue on the next target (assistant prefill, or regenerate and splice).
    #[default]
    Recover,
    /// End the client's stream with an error.
    Error,
}

impl MidStream {
    /// The default.
    pub fn is_recover(&self) -> bool {
        *self == MidStream::Recover
    }
}

/// Where a continued stream picks up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The next frame's `seq`.
    pub seq: u32,
    /// The content the client already received (choice 0).
    pub text: String,
}

/// A target further down a request's fallback order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackTarget {
    /// Provider entry.
    pub provider: String,
    /// Upstream model (messages written before the names were unified say `model`; both are read).
    #[serde(alias = "model")]
    pub upstream_model: String,
    /// Its position in the route's target list, from 1.
    pub rank: u32,
    /// What it is billed at, fixed at admission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
}

/// How an attempt on a target is billed, fixed when the request is admitted:
/// the price-table version in effect when it was received, the target's
/// price under it, and the org's multiplier over cost. The worker bills
/// `cost × multiplier` with exactly these; admission reserves budgets with
/// the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pricing {
    /// The price-table version (0: the config file's prices).
    pub version: u32,
    /// Billed = cost × this / 10⁹.
    pub multiplier_ppb: i64,
    /// The org's plan, if it is on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// The target's price; none: unpriced (its cost is unknown, never free).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<crate::price::Price>,
}

/// How a request's target was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteChoice {
    /// The router's route (empty for a named model).
    pub route: String,
    /// `weighted`, `cheapest`, `fastest`, `balanced`, or `fixed` (a named model).
    pub strategy: String,
    /// The target's position in the route's target list, from 1.
    pub rank: u32,
}

/// What a worker sends back on the reply subject: chunks in `seq` order, then one final frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReplyFrame {
    /// Part of the answer.
    Chunk(ChunkFrame),
    /// One vector of an embeddings answer.
    Embedding(crate::embeddings::EmbeddingFrame),
    /// A rerank answer's ranking.
    Rerank(crate::rerank::RerankFrame),
    /// One generated image.
    Image(crate::images::ImageFrame),
    /// A whole answer that is text (a transcript).
    Text(crate::audio::TextFrame),
    /// Part of a binary answer (speech).
    Bytes(crate::audio::BytesFrame),
    /// The end of the answer: usage, or an error.
    Final(FinalFrame),
}

impl ReplyFrame {
    /// The frame's sequence number; frames of one attempt count 0, 1, 2, … without gaps.
    pub fn seq(&self) -> u32 {
        match self {
            ReplyFrame::Chunk(c) => c.seq,
            ReplyFrame::Embedding(e) => e.seq,
            ReplyFrame::Rerank(r) => r.seq,
            ReplyFrame::Image(i) => i.seq,
            ReplyFrame::Text(t) => t.seq,
            ReplyFrame::Bytes(b) => b.seq,
            ReplyFrame::Final(f) => f.seq,
        }
    }
}

/// How the provider named an answer: the one type for an answer's identity,
/// from the adapter (which reads it from the provider's first chunk) through
/// the first reply frame ([`StartInfo`]) to the client surfaces, which write it
/// in their own format (the ingress fills in what the provider did not say).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseMeta {
    /// The provider's response id (`chatcmpl-…`, `msg_…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
    /// The model the provider says answered (may be a dated snapshot name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_model: Option<String>,
    /// The creation time, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    /// The provider's system fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
}

impl ResponseMeta {
    /// The response id, or `""` when none is known.
    pub fn id(&self) -> &str {
        self.response_id.as_deref().unwrap_or_default()
    }

    /// The model that answered, or `""` when none is known.
    pub fn model(&self) -> &str {
        self.served_model.as_deref().unwrap_or_default()
    }

    /// The creation time, or 0 when none is known.
    pub fn created(&self) -> i64 {
        self.created.unwrap_or_default()
    }
}

/// Who answered and how the provider named the answer; on the first frame of a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartInfo {
    /// The provider entry (config name) that served the request.
    pub provider: String,
    /// The upstream model Switchyard asked for (messages written before the names were unified,
    /// e.g. stored batch results, say `model`; both are read).
    #[serde(alias = "model")]
    pub upstream_model: String,
    /// How the provider named the answer (its fields sit beside these).
    #[serde(flatten)]
    pub response: ResponseMeta,
    /// Which attempt produced this reply.
    pub attempt: u32,
    /// Microseconds from this attempt's provider call to this frame, by the
    /// worker's clock: what the ingress subtracts from its own time to the
    /// first frame to know what Switchyard added (`switchyard_added_latency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_us: Option<u64>,
    /// The worker's own stages before the provider call, when the envelope
    /// asked for them ([`RequestEnvelope::timing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<WorkerStages>,
}

/// What a worker spent on a request before its provider call, by its own
/// clock, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStages {
    /// Reading the envelope of the pulled message.
    pub decode_us: u64,
    /// From the envelope read to the attempt's start: the redelivery and
    /// cancel checks and the target's health (and earlier attempts, on a
    /// retry). `upstream_us` counts from there, the provider's request built
    /// included.
    pub setup_us: u64,
}

/// A piece of the answer: one or more choice deltas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkFrame {
    /// Position in the reply, from 0.
    pub seq: u32,
    /// Present on the first frame only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartInfo>,
    /// The increments; in a non-streamed answer, the whole messages.
    pub choices: Vec<ChoiceDelta>,
}

/// The last frame of a reply; exactly one per reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalFrame {
    /// Position in the reply (the number of chunks before it).
    pub seq: u32,
    /// Present when no chunk came before (an error before the first token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartInfo>,
    /// Why choice 0 ended, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// The tokens, as the provider reported them (normalised by its adapter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<TokenUsage>,
    /// Set when the request failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<FrameError>,
}

/// Why a request failed, in terms the ingress can render for any client API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// A message for the client (never a secret).
    pub message: String,
    /// The provider's HTTP status, when a provider answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_status: Option<u16>,
    /// When to retry, from the provider's `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl FrameError {
    /// An error with just a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        FrameError {
            code,
            message: message.into(),
            provider_status: None,
            retry_after_ms: None,
        }
    }

    /// The HTTP status to answer the client with: the provider's own status when
    /// it tells the client something true about its request (400, 404, 413, 422, 429),
    /// else the code's status.
    pub fn http_status(&self) -> u16 {
        match (self.code, self.provider_status) {
            (ErrorCode::ProviderError, Some(s @ (400 | 404 | 413 | 422 | 429))) => s,
            (code, _) => code.http_status(),
        }
    }
}

/// Published by the ingress on `<ns>.cancel.<request>` when nobody waits any more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancel {
    /// The abandoned request.
    pub request_id: Uuid,
    /// Why.
    pub reason: CancelReason,
}

/// Why a request was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// The client closed the connection.
    ClientDisconnected,
    /// The request's deadline passed.
    DeadlineExceeded,
    /// The client read too slowly, or frames were lost on the way.
    ReplyBroken,
    /// The request is an item of a batch that was cancelled.
    BatchCancelled,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_are_tagged_by_type() {
        let f = ReplyFrame::Final(FinalFrame {
            seq: 3,
            start: None,
            finish_reason: Some("stop".into()),
            usage: None,
            error: None,
        });
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(
            v,
            json!({"type": "final", "seq": 3, "finish_reason": "stop"})
        );
        assert_eq!(serde_json::from_value::<ReplyFrame>(v).unwrap(), f);
    }

    #[test]
    fn provider_status_passes_through_only_when_meaningful() {
        let mut e = FrameError::new(ErrorCode::ProviderError, "bad");
        e.provider_status = Some(400);
        assert_eq!(e.http_status(), 400);
        e.provider_status = Some(503);
        assert_eq!(e.http_status(), 502);
        e.provider_status = Some(401);
        assert_eq!(e.http_status(), 502);
        assert_eq!(
            FrameError::new(ErrorCode::RateLimited, "x").http_status(),
            429
        );
    }
}
