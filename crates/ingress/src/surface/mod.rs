//! The client APIs Switchyard speaks besides OpenAI chat (whose parsing is
//! `validate`, whose encoder is `relay::SseEncoder`): each module parses its
//! requests into the canonical chat request and writes answers, streams and
//! errors in its own format. A new API is one more module here and one route
//! line in `lib.rs`; files and batches live in `batch`.

pub mod embeddings;
pub mod messages;
pub mod responses;
