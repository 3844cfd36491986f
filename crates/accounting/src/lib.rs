//! Accounting: usage events from JetStream into ClickHouse, each counted once.
//!
//! [`run`] is the `switchyard accounting` component: a durable pull consumer
//! (`accounting`, shareable by several processes) on the usage stream
//! (`<NS>_USAGE`, subject `<ns>.usage`) that batches [`UsageEvent`]s by count
//! (`accounting.max_rows`) and age (`accounting.max_wait`), inserts them into
//! `switchyard.requests` (RowBinary over HTTP with the `clickhouse` crate), and acks
//! them only after ClickHouse confirmed the insert. When ClickHouse is down the
//! events stay in the stream (naked with a delay) and arrive when it is back.
//! A redelivered event whose row is already stored is skipped, and the table is a
//! ReplacingMergeTree on (request_id, attempt), so nothing is counted twice.
//! [`migrate`] applies `migrations/clickhouse/*.sql` in order, recording each;
//! [`usage_for_key`] answers `GET /v1/usage` for the ingress, [`invoice_rows`]
//! an org's invoice lines.
//!
//! [`UsageEvent`]: sy_protocol::UsageEvent

mod console_query;
mod consumer;
mod invoice_query;
mod migrate;
mod row;
mod usage_query;

pub use console_query::{
    AttemptRow, RequestFilter, TargetTraffic, TrafficPoint, recent_requests, traffic,
    traffic_by_target,
};
pub use consumer::{CONSUMER, pending_events, run};
pub use invoice_query::{InvoiceRow, invoice_rows};
pub use migrate::{MIGRATIONS, migrate};
pub use row::RequestRow;
pub use usage_query::{
    GroupBy, UsageGroup, UsageScope, month_bounds, parse_instant, usage, usage_for_key,
};

use sy_config::ClickhouseConfig;

/// What can go wrong in accounting.
#[derive(Debug, thiserror::Error)]
pub enum AccountingError {
    /// A ClickHouse query or insert failed.
    #[error("ClickHouse: {0}")]
    Clickhouse(#[from] clickhouse::error::Error),
    /// The bus failed during setup.
    #[error(transparent)]
    Bus(#[from] sy_bus::BusError),
    /// No `[clickhouse]` section in the config.
    #[error("no [clickhouse] section in the config")]
    NotConfigured,
    /// ClickHouse did not finish an insert in time.
    #[error("ClickHouse did not finish the insert within {0:?}")]
    Timeout(std::time::Duration),
}

/// A ClickHouse client for `config` (validation off: 18.16 lacks the format it uses).
pub fn client(config: &ClickhouseConfig) -> clickhouse::Client {
    let mut c = clickhouse::Client::default()
        .with_url(config.url.as_str())
        .with_user(&config.user)
        .with_validation(false);
    if let Some(p) = &config.password {
        c = c.with_password(p.expose());
    }
    c
}
