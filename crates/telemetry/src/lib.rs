//! Logging, metrics and traces shared by every Switchyard binary.
//!
//! [`init`] installs a `tracing` subscriber writing to stderr, filtered by
//! `SWITCHYARD_LOG` (an `EnvFilter` directive such as `info` or
//! `sy_ingress=debug,info`), else `RUST_LOG` as every Rust program reads it,
//! else `[log] level`, else `info`, and formatted as text, or as one JSON
//! object per line when `SWITCHYARD_LOG_FORMAT=json` (else `[log] format`).
//! [`metrics`] holds the process's Prometheus metrics, [`trace`] its
//! OpenTelemetry spans.

use sy_config::LogConfig;
use tracing_subscriber::EnvFilter;

pub mod metrics;
pub mod trace;

/// Installs the global subscriber; a second call is a no-op.
pub fn init(log: &LogConfig) {
    let filter = EnvFilter::try_from_env("SWITCHYARD_LOG")
        .or_else(|_| EnvFilter::try_from_env("RUST_LOG"))
        .or_else(|_| match &log.level {
            Some(level) => EnvFilter::try_new(level),
            None => Ok(EnvFilter::new("info")),
        })
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match std::env::var("SWITCHYARD_LOG_FORMAT") {
        Ok(v) => v.eq_ignore_ascii_case("json"),
        Err(_) => log.json,
    };
    // Colours for a terminal only: a log file or collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
