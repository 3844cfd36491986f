//! Logging and metrics shared by every Switchyard binary.
//!
//! [`init`] installs a `tracing` subscriber writing to stderr, filtered by
//! `SWITCHYARD_LOG` (an `EnvFilter` directive such as `info` or
//! `sy_ingress=debug,info`), else `RUST_LOG` as every Rust program reads it,
//! else `info`, and formatted as text, or as one JSON
//! object per line when `SWITCHYARD_LOG_FORMAT=json`. [`metrics`] holds the
//! process's Prometheus metrics.

use tracing_subscriber::EnvFilter;

pub mod metrics;

/// Installs the global subscriber; a second call is a no-op.
pub fn init() {
    let filter = EnvFilter::try_from_env("SWITCHYARD_LOG")
        .or_else(|_| EnvFilter::try_from_env("RUST_LOG"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("SWITCHYARD_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
