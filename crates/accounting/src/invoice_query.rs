//! What an org's invoice reads from ClickHouse (issue 18): the month's usage
//! rows summed per project, provider, model, price version, multiplier and
//! batch-or-not, from `requests FINAL` (a redelivered event counts once).

use serde::Deserialize;
use sy_config::ClickhouseConfig;

use crate::{AccountingError, client};

/// One invoice line as ClickHouse sums it (read by position: the query's
/// aliases differ from the columns they sum, which 18.16 requires); money as
/// ClickHouse prints a decimal (USD).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, clickhouse::Row)]
pub struct InvoiceRow {
    /// The project (empty for rows without one).
    pub project_id: String,
    /// The provider that served.
    pub provider: String,
    /// The provider's model.
    pub model: String,
    /// The price-table version (0: the config file's prices).
    pub price_version: u32,
    /// Billed over cost as a decimal, or empty for rows from before it was
    /// recorded.
    pub multiplier: String,
    /// 1 for attempts run for a batch.
    pub batch: u8,
    /// Distinct requests.
    pub requests: u64,
    /// Attempts.
    pub attempts: u64,
    /// Attempts without a price.
    pub unpriced_attempts: u64,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Cached input tokens.
    pub cached_input_tokens: u64,
    /// Cache writes, both lifetimes.
    pub cache_write_tokens: u64,
    /// The one-hour part of the cache writes.
    pub cache_write_1h_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// Cost at provider prices, USD.
    pub cost: String,
    /// Billed, USD.
    pub billed: String,
}

/// The lines' query (crates/accounting/sql/, checked on current ClickHouse
/// by tests/sql/chdb_check.py).
const LINES: &str = include_str!("../sql/invoice_lines.sql");
/// The distinct requests' query.
const REQUESTS: &str = include_str!("../sql/invoice_requests.sql");

/// A query file's SQL on database `db`.
fn sql(text: &str, db: &str) -> String {
    crate::migrate::statements(text, db).concat()
}

#[derive(Deserialize, clickhouse::Row)]
struct Count {
    requests: u64,
}

/// `org_id`'s rows with `start <= ts < end` (Unix seconds) as invoice
/// lines, and how many distinct requests they hold (a request that fell
/// back is on several lines, counted once here).
pub async fn invoice_rows(
    config: &ClickhouseConfig,
    org_id: &str,
    start: u32,
    end: u32,
) -> Result<(Vec<InvoiceRow>, u64), AccountingError> {
    let db = &config.database;
    let ch = client(config);
    let rows = ch
        .query(&sql(LINES, db))
        .bind(org_id)
        .bind(start)
        .bind(end)
        .fetch_all::<InvoiceRow>()
        .await?;
    let count = ch
        .query(&sql(REQUESTS, db))
        .bind(org_id)
        .bind(start)
        .bind(end)
        .fetch_one::<Count>()
        .await?;
    Ok((rows, count.requests))
}
