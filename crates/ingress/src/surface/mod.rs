//! The client APIs Switchyard speaks: each module parses its requests into
//! the canonical chat request and writes answers, streams and errors in its
//! own format (the rules every surface shares are in `validate`); `files` and
//! `batches` serve the stored-file and batch APIs over `batch`'s stores. A new
//! API is one more module here and one route line in `lib.rs`.

pub mod audio;
pub mod batches;
pub mod chat;
pub mod embeddings;
pub mod files;
pub(crate) mod form;
pub mod images;
pub mod messages;
pub mod rerank;
pub mod responses;
