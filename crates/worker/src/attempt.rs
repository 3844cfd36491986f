//! One call to a provider: why it was made, and what it learned.

use sy_protocol::TokenUsage;
use sy_protocol::{FrameError, RequestEnvelope};

/// What an attempt learned, kept outside the call so that it survives a cancel.
#[derive(Debug, Default)]
pub(crate) struct AttemptState {
    pub reached_provider: bool,
    pub first_token_unix_ms: Option<u64>,
    pub served_model: Option<String>,
    pub usage: Option<TokenUsage>,
    /// A rerank call's search units, as the provider reported them.
    pub search_units: Option<u64>,
    /// An image generation's images sent.
    pub output_images: u64,
    /// A transcription's audio, seconds, when its answer said.
    pub audio_seconds: Option<f64>,
    pub finish_reason: Option<String>,
    /// Generated text (content, refusals, tool arguments), for estimates only.
    pub output_text: String,
    /// Choice 0's content as sent to the client by this attempt.
    pub content: String,
    /// The answer had more than plain text of one choice (tool calls, a
    /// refusal, several choices): a cut cannot be recovered.
    pub not_plain: bool,
    /// A regenerated continuation did not reproduce what the client had.
    pub diverged: bool,
    pub error: Option<FrameError>,
    /// When the call ended, if the usage event is made later (after the
    /// wait for a cut-off cancel); else the event's own time.
    pub ended_unix_ms: Option<u64>,
}

/// One call to the provider: its attempt number, when it started, and why it
/// was made (a retry or a fallback).
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub attempt: u32,
    pub started_unix_ms: u64,
    pub reason: Option<String>,
}

impl Call {
    pub(crate) fn first(attempt: u32, env: &RequestEnvelope, started_unix_ms: u64) -> Call {
        Call {
            attempt,
            started_unix_ms,
            reason: env.fallback_reason.clone(),
        }
    }
}
