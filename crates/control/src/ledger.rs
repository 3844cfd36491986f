//! Prepaid balances (issue 17): each org's ledger of credits, debits and
//! adjustments in PostgreSQL, in integer nano-USD, the balance their sum
//! (kept beside them in `org_balances`, in the same transaction as each
//! row). Each entry is idempotent by its reference: a credit's is the
//! caller's (a top-up credited twice is credited once), a debit's is the
//! usage event's id (a redelivered event is debited once).
//!
//! A prepaid org's requests are admitted against its balance like against a
//! budget without a period (the grant carries what was credited; Redis counts
//! what was spent and held); [`run`] writes each billed attempt of a prepaid
//! org into the ledger from the usage stream.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use sqlx::FromRow;
use uuid::Uuid;

use crate::audit::{self, Actor, Entry};
use crate::feed::KeyNotice;
use crate::store::{Store, StoreError};

/// An org's balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, FromRow)]
pub struct Balance {
    /// Whether its requests are admitted against the balance.
    pub prepaid: bool,
    /// What is left: credited − debited, nano-USD.
    pub balance_nanos: i64,
    /// Everything credited (adjustments included), nano-USD.
    pub credited_nanos: i64,
    /// Everything debited, nano-USD.
    pub debited_nanos: i64,
}

/// The durable consumer of the usage stream that debits prepaid orgs.
pub const CONSUMER: &str = "ledger";

impl Store {
    /// `org`'s balance now.
    pub async fn balance(&self, org: Uuid) -> Result<Balance, StoreError> {
        let b: Option<Balance> = sqlx::query_as(
            "SELECT o.prepaid, COALESCE(b.balance_nanos, 0) AS balance_nanos, \
             COALESCE(b.credited_nanos, 0) AS credited_nanos, COALESCE(b.debited_nanos, 0) AS debited_nanos \
             FROM orgs o LEFT JOIN org_balances b ON b.org_id = o.id WHERE o.id = $1",
        )
        .bind(org)
        .fetch_optional(self.pool())
        .await?;
        b.ok_or(StoreError::NotFound("org"))
    }

    /// The sum of `org`'s ledger rows: its balance recomputed from scratch
    /// (the stored one must equal it; tests/sql/ledger_invariant.sql checks
    /// every org's).
    pub async fn ledger_sum(&self, org: Uuid) -> Result<i64, StoreError> {
        let (sum,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(sum(amount_nanos), 0)::bigint FROM ledger WHERE org_id = $1",
        )
        .bind(org)
        .fetch_one(self.pool())
        .await?;
        Ok(sum)
    }

    /// Credits `org` with `nanos` (negative: an adjustment down), once per
    /// `reference`; audited. Returns the balance and whether this call
    /// credited (false: that reference was credited before). Every ingress
    /// learns the new credit at once.
    pub async fn credit(
        &self,
        actor: &Actor,
        org: Uuid,
        nanos: i64,
        reference: &str,
        note: &str,
    ) -> Result<(Balance, bool), StoreError> {
        let kind = if nanos >= 0 { "credit" } else { "adjustment" };
        let mut tx = self.pool().begin().await?;
        let exists: Option<(Uuid,)> =
            sqlx::query_as("SELECT id FROM orgs WHERE id = $1 FOR UPDATE")
                .bind(org)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound("org"));
        }
        let fresh = entry(&mut tx, org, kind, nanos, reference, note).await?;
        if fresh {
            let e = Entry {
                action: "org.credit",
                target_kind: "org",
                target_id: org.to_string(),
                before: None,
                after: Some(
                    json!({"kind": kind, "amount_nanos": nanos, "ref": reference, "note": note}),
                ),
            };
            audit::append(&mut tx, actor, e).await?;
        }
        tx.commit().await?;
        if fresh {
            self.announce(KeyNotice::All).await;
        }
        Ok((self.balance(org).await?, fresh))
    }

    /// Debits `org` with `nanos` for usage event `event_id`, once; false when
    /// that event was debited before.
    pub async fn debit(&self, org: Uuid, event_id: &str, nanos: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let fresh = entry(&mut tx, org, "debit", -nanos, event_id, "").await?;
        tx.commit().await?;
        Ok(fresh)
    }
}

/// Writes one ledger row and moves the stored balance with it, unless the
/// reference was written before; true when it wrote.
pub(crate) async fn entry(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    org: Uuid,
    kind: &str,
    amount: i64,
    reference: &str,
    note: &str,
) -> Result<bool, StoreError> {
    let row: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO ledger (org_id, kind, amount_nanos, ref, note) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (org_id, kind, ref) DO NOTHING RETURNING seq",
    )
    .bind(org)
    .bind(kind)
    .bind(amount)
    .bind(reference)
    .bind(note)
    .fetch_optional(&mut **tx)
    .await?;
    if row.is_none() {
        return Ok(false);
    }
    let (credit, debit) = if amount < 0 && kind == "debit" {
        (0, -amount)
    } else {
        (amount, 0)
    };
    sqlx::query(
        "INSERT INTO org_balances (org_id, balance_nanos, credited_nanos, debited_nanos) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (org_id) DO UPDATE SET balance_nanos = org_balances.balance_nanos + $2, \
         credited_nanos = org_balances.credited_nanos + $3, debited_nanos = org_balances.debited_nanos + $4, \
         updated_at = now()",
    )
    .bind(org)
    .bind(amount)
    .bind(credit)
    .bind(debit)
    .execute(&mut **tx)
    .await?;
    Ok(true)
}

/// The Redis key of `org`'s balance (a budget without a period).
pub fn balance_key(org: &str) -> String {
    format!("sy:bud:{{{org}}}:balance:{org}")
}

/// Debits every billed attempt of a prepaid org (a usage event whose ticket
/// names the org's balance) into the ledger, once, from the usage stream's
/// durable consumer [`CONSUMER`]; until the task is dropped.
pub async fn run(store: Store, js: jetstream::Context, stream: String) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match consume(&store, &js, &stream).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "Debiting prepaid balances failed; retrying.");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn consume(store: &Store, js: &jetstream::Context, stream: &str) -> Result<(), String> {
    let stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(CONSUMER.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            description: Some("Switchyard ledger: prepaid orgs' usage debited".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| e.to_string())?;
        let header = |name| msg.headers.as_ref().and_then(|h| h.get(name)).is_some();
        // Free cache hits' rows, in one message: nothing to debit, unread.
        if header(sy_protocol::header::USAGE_FREE) {
            let _ = msg.ack().await;
            continue;
        }
        let rows = header(sy_protocol::header::USAGE_ROWS);
        let mut failed = false;
        let mut read = 0;
        for line in sy_protocol::legacy::usage_lines(&msg.payload, rows) {
            let event = match sy_protocol::UsageDebit::read(line) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, "Skipping an unreadable usage event.");
                    continue;
                }
            };
            read += 1;
            let debit = event.limits.as_ref().and_then(|t| {
                let org = Uuid::parse_str(&t.org).ok()?;
                let key = balance_key(&t.org);
                t.budgets.iter().any(|(k, _)| *k == key).then_some(org)
            });
            let billed = event.billed_nanos.unwrap_or(0);
            // Each debit is written once per event id: a message that comes
            // back debits only what it did not.
            if let Some(org) = debit.filter(|_| billed > 0)
                && let Err(e) = store.debit(org, &event.event_id, billed).await
            {
                tracing::warn!(error = %e, "Debiting a usage event failed; it comes back.");
                failed = true;
                break;
            }
        }
        if failed {
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                .await;
            continue;
        }
        if read == 0 {
            let _ = msg.ack_with(AckKind::Term).await;
            continue;
        }
        if let Err(e) = msg.ack().await {
            tracing::debug!(error = %e, "Acking a debited event failed; it comes back and is skipped.");
        }
    }
    Err("the usage stream's messages ended".into())
}

/// Starts debiting prepaid orgs when the config has the control plane
/// (`[tenants]` and `[postgres]`): the accounting component runs it beside
/// the consumer. The task ends when the handle is aborted.
pub fn start(
    config: &sy_config::Config,
    js: jetstream::Context,
    stream: String,
) -> Option<tokio::task::JoinHandle<()>> {
    use std::str::FromStr;
    let (tenants, postgres) = (config.tenants.as_ref()?, config.postgres.as_ref()?);
    let pepper = crate::key::Pepper::new(tenants.key_pepper.expose().as_bytes()).ok()?;
    let options = sqlx::postgres::PgConnectOptions::from_str(postgres.url.expose()).ok()?;
    let store = Store::connect_lazy(options, pepper, &tenants.key_env).ok()?;
    Some(tokio::spawn(run(store, js, stream)))
}
