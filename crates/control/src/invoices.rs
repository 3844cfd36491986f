//! An org's invoice for a month (issue 18): the usage lines from ClickHouse
//! (`sy_accounting::invoice_rows`), the ledger over the month and the
//! projects' names from PostgreSQL (one read-only snapshot), put together as
//! a [`sy_billing::invoice::Invoice`]. `GET /admin/v1/orgs/{id}/invoices/{period}`
//! and `switchyard billing invoice` serve it; docs/billing.md says what is on it.

use std::collections::HashMap;

use sqlx::FromRow;
use sy_billing::invoice::nanos_of_decimal;
use sy_billing::invoice::{Entry, Header, Invoice, Ledger, Line, Status, Tokens, Usage};
use sy_config::ClickhouseConfig;
use uuid::Uuid;

use crate::store::{Store, StoreError};

/// How long after its end a month stays open: usage rows reach ClickHouse
/// within seconds (the accounting consumer's batch age), and an hour covers
/// a consumer restart. Until then the invoice says `open`.
pub const SETTLE_SECS: u32 = 3600;

/// Why there is no invoice.
#[derive(Debug, thiserror::Error)]
pub enum InvoiceError {
    /// Not a month like `2026-11` (from 1970-01 to 2105-11).
    #[error("'period' must be a month like 2026-11, not '{0}'")]
    BadPeriod(String),
    /// The month has not begun.
    #[error("the period {0} has not begun")]
    NotBegun(String),
    /// PostgreSQL failed, or the org does not exist.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// ClickHouse failed.
    #[error(transparent)]
    Usage(#[from] sy_accounting::AccountingError),
    /// ClickHouse answered a figure that is not a decimal.
    #[error("ClickHouse answered '{0}' for an amount")]
    Figure(String),
}

#[derive(FromRow)]
struct Totals {
    balance_start: i64,
    balance_end: i64,
    debits: i64,
    debited: i64,
}

#[derive(FromRow)]
struct EntryRow {
    time: String,
    kind: String,
    amount_nanos: i64,
    reference: String,
    note: String,
}

impl Store {
    /// `org`'s ledger between `start` and `end` (Unix seconds) and its
    /// projects' names, from one read-only snapshot (a credit written
    /// meanwhile is in both balances and the entries, or in none).
    pub async fn ledger_period(
        &self,
        org: Uuid,
        start: u32,
        end: u32,
    ) -> Result<(Ledger, HashMap<String, String>), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let (start, end) = (f64::from(start), f64::from(end));
        // The balance now, less what was written since each bound: only the
        // rows from the month's start on are read (ledger_org_time), never
        // the org's whole history of debits.
        let t: Totals = sqlx::query_as(
            "SELECT \
             (b.now - COALESCE(SUM(l.amount_nanos) FILTER (WHERE l.created_at >= to_timestamp($2)), 0))::bigint \
                 AS balance_start, \
             (b.now - COALESCE(SUM(l.amount_nanos) FILTER (WHERE l.created_at >= to_timestamp($3)), 0))::bigint \
                 AS balance_end, \
             COUNT(l.seq) FILTER (WHERE l.kind = 'debit' AND l.created_at < to_timestamp($3)) AS debits, \
             COALESCE(-SUM(l.amount_nanos) FILTER (WHERE l.kind = 'debit' \
                 AND l.created_at < to_timestamp($3)), 0)::bigint AS debited \
             FROM (SELECT COALESCE((SELECT balance_nanos FROM org_balances WHERE org_id = $1), 0) AS now) b \
             LEFT JOIN ledger l ON l.org_id = $1 AND l.created_at >= to_timestamp($2) \
             GROUP BY b.now",
        )
        .bind(org)
        .bind(start)
        .bind(end)
        .fetch_one(&mut *tx)
        .await?;
        let entries: Vec<EntryRow> = sqlx::query_as(
            "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS time, \
             kind, amount_nanos, ref AS reference, note FROM ledger \
             WHERE org_id = $1 AND kind <> 'debit' \
             AND created_at >= to_timestamp($2) AND created_at < to_timestamp($3) \
             ORDER BY created_at, seq",
        )
        .bind(org)
        .bind(start)
        .bind(end)
        .fetch_all(&mut *tx)
        .await?;
        let names: Vec<(String, String)> =
            sqlx::query_as("SELECT id::text, name FROM projects WHERE org_id = $1")
                .bind(org)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let ledger = Ledger {
            balance_start_nanos: t.balance_start,
            entries: entries
                .into_iter()
                .map(|e| Entry {
                    time: e.time,
                    kind: e.kind,
                    amount_nanos: e.amount_nanos,
                    reference: e.reference,
                    note: e.note,
                })
                .collect(),
            debits: u64::try_from(t.debits).unwrap_or(0),
            debited_nanos: t.debited,
            balance_end_nanos: t.balance_end,
        };
        Ok((ledger, names.into_iter().collect()))
    }
}

/// `period`'s bounds (Unix seconds), unless it is not a month that has begun
/// by `now`.
pub fn period(period: &str, now: u32) -> Result<(u32, u32), InvoiceError> {
    let (start, end) = sy_accounting::month_bounds(period)
        .ok_or_else(|| InvoiceError::BadPeriod(period.chars().take(40).collect()))?;
    if start > now {
        return Err(InvoiceError::NotBegun(period.to_owned()));
    }
    Ok((start, end))
}

/// `org`'s invoice for `period` (`YYYY-MM`, UTC) as of `now` (Unix seconds).
pub async fn invoice(
    store: &Store,
    clickhouse: &ClickhouseConfig,
    org: Uuid,
    period: &str,
    now: u32,
) -> Result<Invoice, InvoiceError> {
    let (start, end) = self::period(period, now)?;
    let name = store.org(org).await?.name;
    let (rows, requests) =
        sy_accounting::invoice_rows(clickhouse, &org.to_string(), start, end).await?;
    let (ledger, names) = store.ledger_period(org, start, end).await?;
    let amount = |s: &str| nanos_of_decimal(s).ok_or_else(|| InvoiceError::Figure(s.to_owned()));
    let mut lines = Vec::with_capacity(rows.len());
    for r in rows {
        let multiplier_ppb = match r.multiplier.as_str() {
            "" => None,
            m => Some(
                i64::try_from(amount(m)?)
                    .map_err(|_| InvoiceError::Figure(r.multiplier.clone()))?,
            ),
        };
        lines.push(Line {
            project_name: names.get(&r.project_id).cloned().unwrap_or_default(),
            provider: r.provider,
            model: r.model,
            price_version: r.price_version,
            multiplier_ppb,
            batch: r.batch != 0,
            requests: r.requests,
            usage: Usage {
                attempts: r.attempts,
                unpriced_attempts: r.unpriced_attempts,
                tokens: Tokens {
                    input: r.input_tokens,
                    cached_input: r.cached_input_tokens,
                    cache_write_5m: r.cache_write_tokens.saturating_sub(r.cache_write_1h_tokens),
                    cache_write_1h: r.cache_write_1h_tokens,
                    output: r.output_tokens,
                    reasoning: r.reasoning_tokens,
                },
                cost_nanos: amount(&r.cost)?,
                billed_nanos: amount(&r.billed)?,
            },
            project_id: r.project_id,
        });
    }
    let status = if now >= end.saturating_add(SETTLE_SECS) {
        Status::Closed
    } else {
        Status::Open
    };
    let header = Header {
        org_id: org.to_string(),
        org_name: name,
        period: period.to_owned(),
        start,
        end,
        status,
    };
    Ok(Invoice::new(header, requests, lines, ledger))
}
