//! End-to-end tests: the real `switchyard all` binary against real NATS and the
//! mock provider (the only stand-in), over HTTP and SSE.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod accounting;
mod audio;
mod bad_input;
mod batch;
mod billing;
mod cache;
mod cancel;
mod chat;
mod cluster;
mod config_check;
mod console;
mod crash;
mod deploy;
mod dialects;
mod embeddings;
mod hostile;
mod idempotency;
mod images;
mod intake;
mod limits;
mod load;
mod metrics;
mod models;
mod pipelines;
mod rerank;
mod resilience;
mod restart;
mod routing;
mod schema;
mod sdk;
mod stack;
mod tenants;
mod traces;
mod usage;
