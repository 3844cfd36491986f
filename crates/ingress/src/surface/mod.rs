//! The client APIs Switchyard speaks: each module parses its requests into
//! the canonical chat request and writes answers, streams and errors in its
//! own format (the rules every surface shares are in `validate`). A new API
//! is one more module here and one route line in `lib.rs`; files and batches
//! live in `batch`.

pub mod chat;
pub mod embeddings;
pub mod messages;
pub mod responses;
