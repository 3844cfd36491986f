//! `GET /v1/usage`: a key's own usage and cost, grouped by model or by day.

use serde::{Deserialize, Serialize};
use sy_config::ClickhouseConfig;

use crate::{AccountingError, client};

/// How to group usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// By the model the client asked for.
    Model,
    /// By UTC day.
    Day,
}

/// One group's usage; money as exact decimal strings in USD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct UsageGroup {
    /// The model, or the day (`YYYY-MM-DD`).
    pub group: String,
    /// Requests (attempts of one request count once).
    pub requests: u64,
    /// Attempts, fallbacks included.
    pub attempts: u64,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Cached input tokens.
    pub cached_input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost at provider prices, USD (priced attempts only).
    pub cost: String,
    /// Billed, USD (priced attempts only).
    pub billed: String,
    /// Attempts whose model has no price in the config.
    pub unpriced_attempts: u64,
}

/// `key_id`'s usage with `start <= ts < end` (Unix seconds), grouped.
pub async fn usage_for_key(
    config: &ClickhouseConfig,
    key_id: &str,
    start: u32,
    end: u32,
    group_by: GroupBy,
) -> Result<Vec<UsageGroup>, AccountingError> {
    let group = match group_by {
        GroupBy::Model => "model",
        GroupBy::Day => "toString(toDate(ts))",
    };
    let sql = format!(
        "SELECT {group} AS g, uniqExact(request_id) AS requests, count() AS attempts, \
         sum(input_tokens) AS input_sum, sum(cached_input_tokens) AS cached_sum, \
         sum(output_tokens) AS output_sum, \
         toString(sum(ifNull(cost, toDecimal64(0, 9)))) AS cost_total, \
         toString(sum(ifNull(billed, toDecimal64(0, 9)))) AS billed_total, \
         sum(isNull(cost)) AS unpriced \
         FROM {db}.requests FINAL \
         WHERE key_id = ? AND ts >= toDateTime(?) AND ts < toDateTime(?) \
         GROUP BY g ORDER BY g",
        db = config.database
    );
    Ok(client(config)
        .query(&sql)
        .bind(key_id)
        .bind(start)
        .bind(end)
        .fetch_all::<UsageGroup>()
        .await?)
}
