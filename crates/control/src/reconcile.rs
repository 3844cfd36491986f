//! Budgets reconciled from the truth: every budget's spend in its current
//! period, as Redis counts it (settled from usage events), is checked against
//! what ClickHouse's exactly-once usage rows say and set to it, all of them
//! from one query a round. A Redis that lost its data, or a settlement that
//! failed, heals within one round (default 30 s). The drift of each round is
//! logged per budget (and returned, for tests).
//!
//! A settlement that lands after its rows were counted here is counted twice
//! until the next round lowers it again: the error is on the safe side (a
//! budget looks fuller than it is for one round), never an overspend.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;
use sqlx::FromRow;
use sy_config::ClickhouseConfig;
use sy_limits::{Limiter, Period};
use uuid::Uuid;

use crate::keytable::budget_of;
use crate::store::{Store, StoreError};

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The control plane's database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// ClickHouse.
    #[error("clickhouse: {0}")]
    Clickhouse(#[from] clickhouse::error::Error),
    /// Redis.
    #[error(transparent)]
    Limits(#[from] sy_limits::LimitError),
}

/// Counts a corrected drift of `kind` (`budget` or `balance`) in the metrics.
fn drifted(kind: &str, drift_nanos: i64) {
    let m = sy_telemetry::metrics::get();
    let label = [("budget", kind.to_owned())];
    m.budget_drifts.get_or_create(&label).inc();
    m.budget_drift_nanos
        .get_or_create(&label)
        .inc_by(drift_nanos.unsigned_abs());
}

/// One budget's drift in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// `key <id>`, `project <id>` or `org <id>`.
    pub budget: String,
    /// The truth minus what Redis had as spent, nano-USD.
    pub drift_nanos: i64,
    /// The truth, nano-USD.
    pub spent_nanos: i64,
}

#[derive(FromRow)]
struct BudgetRow {
    kind: String,
    id: Uuid,
    org_id: Uuid,
    budget: Value,
}

const BUDGETS: &str = "SELECT 'org' AS kind, id, id AS org_id, budget FROM orgs WHERE budget IS NOT NULL \
    UNION ALL SELECT 'project', id, org_id, budget FROM projects WHERE budget IS NOT NULL \
    UNION ALL SELECT 'key', k.id, p.org_id, k.budget FROM api_keys k JOIN projects p ON p.id = k.project_id \
        WHERE k.budget IS NOT NULL";

/// What the usage rows say each budgeted key, project and org spent in the
/// periods that hold now: one ClickHouse query for every budget (per key,
/// project and org: since the start of today, of this month, and ever).
#[derive(Default)]
struct Spent {
    /// (column, id) → nano-USD billed today, this month, ever.
    by: std::collections::HashMap<(&'static str, Uuid), [i64; 3]>,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct SpentRow {
    key_id: String,
    project_id: String,
    org_id: String,
    today: String,
    month: String,
    ever: String,
}

impl Spent {
    /// Budgets asked about in one query at most (ClickHouse bounds a
    /// query's size: 256 KiB by default; 1,000 ids take about 40 KiB).
    const CHUNK: usize = 1000;

    async fn fetch(
        ch: &ClickhouseConfig,
        rows: &[BudgetRow],
        now_s: u64,
    ) -> Result<Spent, ReconcileError> {
        let (_, day) = Period::Day.at(now_s);
        let (_, month) = Period::Month.at(now_s);
        let client = sy_accounting::client(ch);
        let mut spent = Spent::default();
        for chunk in rows.chunks(Self::CHUNK) {
            let asked: std::collections::HashSet<(&str, Uuid)> =
                chunk.iter().map(|r| (column_of(&r.kind), r.id)).collect();
            let ids = |column: &str| {
                let list: Vec<String> = chunk
                    .iter()
                    .filter(|r| column_of(&r.kind) == column)
                    .map(|r| format!("'{}'", r.id)) // a UUID: nothing to escape
                    .collect();
                match list.is_empty() {
                    true => "''".to_owned(),
                    false => list.join(","),
                }
            };
            let sql = format!(
                "SELECT key_id, project_id, org_id, \
                 toString(sumIf(assumeNotNull(billed), ts >= toDateTime({day}))) AS today, \
                 toString(sumIf(assumeNotNull(billed), ts >= toDateTime({month}))) AS month, \
                 toString(sum(assumeNotNull(billed))) AS ever \
                 FROM {}.requests FINAL \
                 WHERE key_id IN ({}) OR project_id IN ({}) OR org_id IN ({}) \
                 GROUP BY key_id, project_id, org_id",
                ch.database,
                ids("key"),
                ids("project"),
                ids("org"),
            );
            let found: Vec<SpentRow> = client.query(&sql).fetch_all().await?;
            spent.add(&asked, &found);
        }
        Ok(spent)
    }

    /// Adds the rows one query found to what it was `asked` about (only
    /// that: a row of a key asked in this query may be of an org asked in
    /// another).
    fn add(&mut self, asked: &std::collections::HashSet<(&str, Uuid)>, found: &[SpentRow]) {
        let nanos = |t: &str| sy_config::price::parse_nanos(t).unwrap_or(0);
        for r in found {
            let sums = [nanos(&r.today), nanos(&r.month), nanos(&r.ever)];
            for (column, id) in [
                ("key", &r.key_id),
                ("project", &r.project_id),
                ("org", &r.org_id),
            ] {
                let Ok(id) = id.parse::<Uuid>() else { continue };
                if !asked.contains(&(column, id)) {
                    continue;
                }
                let total = self.by.entry((column, id)).or_default();
                for (t, s) in total.iter_mut().zip(sums) {
                    *t += s;
                }
            }
        }
    }

    /// What `kind` `id` spent in `period`'s current period.
    fn of(&self, kind: &str, id: Uuid, period: Period) -> i64 {
        let column = column_of(kind);
        let at = match period {
            Period::Day => 0,
            Period::Month => 1,
            Period::None | Period::Session => 2,
        };
        self.by.get(&(column, id)).map_or(0, |s| s[at])
    }
}

/// The name a budget's kind has in [`Spent`] (`key`, `project`, `org`).
fn column_of(kind: &str) -> &'static str {
    match kind {
        "org" => "org",
        "project" => "project",
        _ => "key",
    }
}

/// One round at Unix second `now_s`: every budget's spend set to the truth.
pub async fn once(
    store: &Store,
    ch: &ClickhouseConfig,
    limiter: &Limiter,
    now_s: u64,
) -> Result<Vec<Drift>, ReconcileError> {
    let rows: Vec<BudgetRow> = sqlx::query_as(BUDGETS)
        .fetch_all(store.pool())
        .await
        .map_err(StoreError::from)?;
    let spent = Spent::fetch(ch, &rows, now_s).await?;
    let mut drifts = Vec::new();
    let mut orgs = std::collections::BTreeSet::new();
    for row in rows {
        orgs.insert(row.org_id);
        let Some((_, period)) = budget_of(Some(&row.budget)) else {
            continue;
        };
        let (pid, _) = period.at(now_s);
        let truth = spent.of(&row.kind, row.id, period);
        let b = sy_limits::Budget::of_org(
            &row.org_id.to_string(),
            &row.kind,
            &row.id.to_string(),
            0,
            period,
        );
        let drift = limiter
            .reconcile(&b.key, period, &pid, truth, false)
            .await?;
        if drift != 0 {
            drifted("budget", drift);
            tracing::info!(budget = %b.name, drift_nanos = drift, spent_nanos = truth, "Budget reconciled from the usage rows.");
        }
        drifts.push(Drift {
            budget: b.name,
            drift_nanos: drift,
            spent_nanos: truth,
        });
    }
    // Prepaid balances: what the ledger debited (written after settlement,
    // so it may lag: it only ever raises Redis's count).
    let balances: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT o.id, COALESCE(b.debited_nanos, 0) FROM orgs o \
         LEFT JOIN org_balances b ON b.org_id = o.id WHERE o.prepaid",
    )
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::from)?;
    for (org, debited) in balances {
        orgs.insert(org);
        let key = crate::ledger::balance_key(&org.to_string());
        let drift = limiter
            .reconcile(&key, Period::None, "all", debited, true)
            .await?;
        if drift != 0 {
            drifted("balance", drift);
            tracing::info!(org = %org, drift_nanos = drift, "Prepaid balance reconciled from the ledger.");
        }
        drifts.push(Drift {
            budget: format!("the prepaid balance of org {org}"),
            drift_nanos: drift,
            spent_nanos: debited,
        });
    }
    // Every org's budgets are restored into this Redis: admission may
    // reserve against them (it refuses until then, after a data loss).
    for org in orgs {
        limiter.mark_ready(&org.to_string()).await?;
    }
    limiter.reconciled(true).await?;
    Ok(drifts)
}

/// The wait before a failed round is tried again; it doubles with each
/// failure in a row, up to the period.
const RETRY_FIRST: Duration = Duration::from_secs(1);

/// Reconciles every `every`, and at once when the control plane announces a
/// change (a new budget, a credit) or when Redis has lost its data (checked
/// every second), until the task is dropped. Rounds wait while Redis is not
/// connected; a failed round is logged and tried again after 1 s, then 2 s,
/// 4 s… up to `every`: until a round has marked an org's budgets restored,
/// its budgeted requests are refused (after a data loss, or for an org whose
/// first budget was just set), so one slow Redis or ClickHouse answer must
/// not hold them up for a whole period.
pub async fn run(
    store: Store,
    ch: ClickhouseConfig,
    limiter: Arc<OnceLock<Limiter>>,
    every: Duration,
    notices: Option<async_nats::Subscriber>,
) {
    use futures::StreamExt;
    let mut notices = notices;
    let mut next = tokio::time::Instant::now();
    let mut retry = RETRY_FIRST;
    loop {
        /// What woke the loop.
        enum Wake {
            Timer,
            Notice,
            NoticesEnded,
            Check,
        }
        let notice = async {
            match notices.as_mut() {
                Some(n) => match n.next().await {
                    Some(_) => Wake::Notice,
                    None => Wake::NoticesEnded,
                },
                None => std::future::pending::<Wake>().await,
            }
        };
        let woke = tokio::select! {
            () = tokio::time::sleep_until(next) => Wake::Timer,
            w = notice => w,
            () = tokio::time::sleep(Duration::from_secs(1)) => Wake::Check,
        };
        match woke {
            Wake::Timer => {}
            // Let a burst of changes land before one round.
            Wake::Notice => tokio::time::sleep(Duration::from_millis(50)).await,
            Wake::NoticesEnded => {
                tracing::warn!(
                    "Control-plane notices ended: budgets are reconciled on a timer only."
                );
                notices = None;
                continue;
            }
            Wake::Check => {
                // A Redis that lost its data has no end-of-round marker.
                let lost = match limiter.get() {
                    Some(l) => !l.reconciled(false).await.unwrap_or(true),
                    None => false,
                };
                if !lost {
                    continue;
                }
            }
        }
        let Some(l) = limiter.get() else {
            next = tokio::time::Instant::now() + Duration::from_secs(1);
            continue;
        };
        let now_s = sy_protocol::now_unix_ms() / 1000;
        match once(&store, &ch, l, now_s).await {
            Ok(d) => {
                let drifted = d.iter().filter(|d| d.drift_nanos != 0).count();
                tracing::debug!(budgets = d.len(), drifted, "Budgets reconciled.");
                retry = RETRY_FIRST;
                next = tokio::time::Instant::now() + every;
            }
            Err(e) => {
                let wait = retry.min(every);
                tracing::warn!(error = %e, retry_in = ?wait, "Reconciling budgets failed; tried again soon.");
                retry = retry.saturating_mul(2);
                next = tokio::time::Instant::now() + wait;
            }
        }
    }
}

/// Starts reconciling when the config has what it takes (`[tenants]`,
/// `[postgres]`, `[clickhouse]` and `[redis]`): the accounting component
/// runs it beside the consumer. The task ends when the handle is aborted.
pub async fn start(
    config: &sy_config::Config,
    nats: &async_nats::Client,
    key_notices: String,
) -> Option<tokio::task::JoinHandle<()>> {
    use std::str::FromStr;
    let (tenants, postgres) = (config.tenants.as_ref()?, config.postgres.as_ref()?);
    let (ch, redis) = (config.clickhouse.clone()?, config.redis.as_ref()?);
    let pepper = crate::key::Pepper::new(tenants.key_pepper.expose().as_bytes()).ok()?;
    let options = match sqlx::postgres::PgConnectOptions::from_str(postgres.url.expose()) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "No budget reconciliation: the PostgreSQL URL does not parse.");
            return None;
        }
    };
    let store = match Store::connect_lazy(options, pepper, &tenants.key_env) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "No budget reconciliation: no PostgreSQL pool.");
            return None;
        }
    };
    let limiter = Limiter::connect_or_retry(redis.url.expose().to_owned()).await;
    let every = config.limits.reconcile;
    tracing::info!(?every, "Reconciling budgets from the usage rows.");
    let notices = match nats.subscribe(key_notices).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "Budgets are reconciled on a timer only: no control-plane notices.");
            None
        }
    };
    Some(tokio::spawn(run(store, ch, limiter, every, notices)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: Uuid, project: Uuid, org: Uuid, today: &str, month: &str, ever: &str) -> SpentRow {
        SpentRow {
            key_id: key.to_string(),
            project_id: project.to_string(),
            org_id: org.to_string(),
            today: today.into(),
            month: month.into(),
            ever: ever.into(),
        }
    }

    #[test]
    fn each_budget_gets_its_rows_once_whichever_query_asked_for_it() {
        let (k1, k2, p, o) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let rows = [
            row(k1, p, o, "0.000001", "0.000002", "0.000003"),
            row(k2, p, o, "0.00001", "0.00002", "0.00003"),
        ];
        let mut spent = Spent::default();
        // First query: key k1 and the project; both rows come back (the
        // project matches both), the org is not asked about here.
        let asked = [("key", k1), ("project", p)].into_iter().collect();
        spent.add(&asked, &rows);
        // Second query: the org; the same rows come back again.
        let asked = [("org", o)].into_iter().collect();
        spent.add(&asked, &rows);
        assert_eq!(spent.of("key", k1, Period::Day), 1_000);
        assert_eq!(spent.of("key", k1, Period::Month), 2_000);
        assert_eq!(spent.of("key", k1, Period::None), 3_000);
        assert_eq!(
            spent.of("key", k2, Period::None),
            0,
            "k2 was not asked about"
        );
        assert_eq!(spent.of("project", p, Period::Month), 22_000);
        assert_eq!(spent.of("org", o, Period::Day), 11_000, "once, not twice");
        assert_eq!(spent.of("org", o, Period::None), 33_000);
    }
}
