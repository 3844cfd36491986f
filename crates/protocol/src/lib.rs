//! The wire contracts of Switchyard, with no I/O.
//!
//! This crate owns every message that crosses NATS — [`RequestEnvelope`] on the
//! request stream, [`ReplyFrame`]s (`ChunkFrame`, `FinalFrame`) on a request's
//! reply subject, [`Cancel`] on the cancel subject — plus the canonical chat
//! model they carry ([`chat`]), the closed list of [`ErrorCode`]s, the subject
//! builders ([`Subjects`]) and the HTTP header names ([`header`]).
//!
//! All messages are JSON (serde). Their JSON Schemas live in `schemas/` at the
//! repository root and a test checks real messages against them. Nothing here
//! talks to the network: `sy-bus` moves these types, `sy-ingress` and
//! `sy-worker` produce and consume them; [`UsageEvent`] goes from the worker to
//! the accounting consumer on `<ns>.usage`; [`Observation`]s go from workers to
//! every ingress on `<ns>.live.<provider>` (core NATS) for live routing state;
//! batch jobs, records, items and results are in [`batch`].

pub mod anthropic;
pub mod audio;
pub mod batch;
pub mod chat;
pub mod embeddings;
mod error;
mod frame;
pub mod header;
pub mod images;
pub mod json;
pub mod legacy;
pub mod price;
pub mod rerank;
pub mod tag;

/// Reply frames an ingress buffers per request before it cuts off a client that
/// reads too slowly (it then cancels the request with reason `reply_broken`).
/// A worker that sent at least this many frames of a stream waits a moment for
/// such a cancel before it records the answer as delivered.
pub const REPLY_BUFFER_FRAMES: usize = 1024;
mod live;
mod subject;
mod usage;

pub use error::ErrorCode;
pub use frame::{
    ApiSurface, Cancel, CancelReason, ChunkFrame, EnvelopeHead, FallbackTarget, FinalFrame,
    FrameError, LimitTicket, MidStream, PipelineStep, Pricing, ReplyFrame, RequestEnvelope,
    ResponseMeta, Resume, RouteChoice, StartInfo, Watchdogs, WorkerStages,
};
pub use live::{ForcedState, Observation, Outcome, TargetOverride};
pub use subject::{MAX_SUBJECT_LEN, Subjects, is_valid_subject, is_valid_token, route_token};
pub use usage::{TokenSource, TokenUsage, UsageDebit, UsageEvent, UsageStatus};

/// Milliseconds since the Unix epoch, the time unit of every timestamp on the bus.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `text` as an error message may echo it: at most `max_chars` characters,
/// with `…` when cut (client text is of any length).
pub fn bounded(text: &str, max_chars: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        None => std::borrow::Cow::Borrowed(text),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}…", &text[..end])),
    }
}
