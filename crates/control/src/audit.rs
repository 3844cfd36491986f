//! The audit log: every admin write appends one row in its own transaction
//! (who, in which role, did what to which target, the values before and
//! after). Rows are hash-chained: a row's hash is SHA-256 of the previous
//! row's hash and the row's content as canonical JSON, the first row chaining
//! from 32 zero bytes. Appends take a transaction-scoped advisory lock, so the
//! chain has one order however many writers there are. [`verify`] recomputes
//! the chain and names the first row that does not fit.

use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

/// Who makes an admin write, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The admin identity (a token's name, or `cli` for local commands).
    pub identity: String,
    /// Its role (`owner`, `admin`, `operator`, `billing`, `viewer`).
    pub role: String,
    /// The admin API request that made the write, if one did.
    pub request_id: Option<String>,
    /// The client's address, if the write came over the network.
    pub client_ip: Option<String>,
}

impl Actor {
    /// An actor with no request or address (a local command, a test).
    pub fn local(identity: &str, role: &str) -> Self {
        Actor {
            identity: identity.to_owned(),
            role: role.to_owned(),
            request_id: None,
            client_ip: None,
        }
    }
}

/// One admin write, as the log keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<'a> {
    /// What was done (`org.create`, `key.rotate`, …).
    pub action: &'a str,
    /// What kind of thing it was done to (`org`, `project`, `key`).
    pub target_kind: &'a str,
    /// Its id.
    pub target_id: String,
    /// Its values before (none for a creation).
    pub before: Option<Value>,
    /// Its values after.
    pub after: Option<Value>,
}

/// The lock key appends serialize on (an arbitrary constant: "sy-audit").
const LOCK: i64 = 0x7379_2d61_7564_6974;

/// Why the chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    /// This row's stored hash (or its link to the row before) is not what its
    /// content and the chain say: the row, or one before it, was changed.
    #[error("audit row {seq} does not match its hash chain")]
    Row {
        /// The row.
        seq: i64,
    },
    /// Rows are missing before this one.
    #[error("audit rows are missing before row {seq}")]
    Gap {
        /// The first row after the gap.
        seq: i64,
    },
}

/// What a row's hash covers.
struct Content<'a> {
    seq: i64,
    at_ms: i64,
    actor: &'a str,
    role: &'a str,
    action: &'a str,
    target_kind: &'a str,
    target_id: &'a str,
    before: Option<&'a Value>,
    after: Option<&'a Value>,
    request_id: Option<&'a str>,
    client_ip: Option<&'a str>,
}

/// The hash of a row: SHA-256(prev || canonical JSON of its content). The
/// request id and client address join the content when either is present,
/// so rows written before they existed hash as they did.
fn hash(prev: &[u8], c: &Content<'_>) -> [u8; 32] {
    let mut content = vec![
        serde_json::json!(c.seq),
        serde_json::json!(c.at_ms),
        serde_json::json!(c.actor),
        serde_json::json!(c.role),
        serde_json::json!(c.action),
        serde_json::json!(c.target_kind),
        serde_json::json!(c.target_id),
        serde_json::json!(c.before),
        serde_json::json!(c.after),
    ];
    if c.request_id.is_some() || c.client_ip.is_some() {
        content.push(serde_json::json!(c.request_id));
        content.push(serde_json::json!(c.client_ip));
    }
    let content = Value::Array(content);
    let mut h = Sha256::new();
    h.update(prev);
    h.update(content.to_string().as_bytes());
    h.finalize().into()
}

/// Appends `entry` in the caller's transaction (`tx`), after the last row.
pub async fn append(
    tx: &mut PgConnection,
    actor: &Actor,
    entry: Entry<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK)
        .execute(&mut *tx)
        .await?;
    let last: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
    let (seq, prev) = match last {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, vec![0u8; 32]),
    };
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    // What the database gives back for jsonb is what the hash covers.
    let (before, after): (Option<Value>, Option<Value>) =
        sqlx::query_as("SELECT $1::jsonb, $2::jsonb")
            .bind(&entry.before)
            .bind(&entry.after)
            .fetch_one(&mut *tx)
            .await?;
    let h = hash(
        &prev,
        &Content {
            seq,
            at_ms,
            actor: &actor.identity,
            role: &actor.role,
            action: entry.action,
            target_kind: entry.target_kind,
            target_id: &entry.target_id,
            before: before.as_ref(),
            after: after.as_ref(),
            request_id: actor.request_id.as_deref(),
            client_ip: actor.client_ip.as_deref(),
        },
    );
    sqlx::query(
        "INSERT INTO audit_log (seq, at_ms, actor, role, action, target_kind, target_id, \
         before, after, prev_hash, hash, request_id, client_ip) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(seq)
    .bind(at_ms)
    .bind(&actor.identity)
    .bind(&actor.role)
    .bind(entry.action)
    .bind(entry.target_kind)
    .bind(&entry.target_id)
    .bind(&before)
    .bind(&after)
    .bind(&prev)
    .bind(&h[..])
    .bind(&actor.request_id)
    .bind(&actor.client_ip)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A stored row.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Row {
    /// Its place in the chain, from 1.
    pub seq: i64,
    /// When (Unix ms).
    pub at_ms: i64,
    /// Who.
    pub actor: String,
    /// In which role.
    pub role: String,
    /// What (`org.create`, `key.revoke`, …).
    pub action: String,
    /// What kind of thing.
    pub target_kind: String,
    /// Which.
    pub target_id: String,
    /// Its values before.
    pub before: Option<Value>,
    /// Its values after.
    pub after: Option<Value>,
    /// The admin API request, if one.
    pub request_id: Option<String>,
    /// The client's address, if one.
    pub client_ip: Option<String>,
    /// The previous row's hash.
    #[serde(skip)]
    pub prev_hash: Vec<u8>,
    /// This row's hash.
    #[serde(skip)]
    pub hash: Vec<u8>,
}

/// The columns of [`Row`].
pub const ROW_COLUMNS: &str = "seq, at_ms, actor, role, action, target_kind, target_id, before, \
    after, request_id, client_ip, prev_hash, hash";

/// Recomputes the whole chain; `Ok(n)` is the number of rows that verify.
pub async fn verify(pool: &PgPool) -> Result<Result<u64, Broken>, sqlx::Error> {
    let rows: Vec<Row> =
        sqlx::query_as(&format!("SELECT {ROW_COLUMNS} FROM audit_log ORDER BY seq"))
            .fetch_all(pool)
            .await?;
    let mut prev = vec![0u8; 32];
    for (expected_seq, r) in (1..).zip(rows.iter()) {
        if r.seq != expected_seq {
            return Ok(Err(Broken::Gap { seq: r.seq }));
        }
        let h = hash(
            &prev,
            &Content {
                seq: r.seq,
                at_ms: r.at_ms,
                actor: &r.actor,
                role: &r.role,
                action: &r.action,
                target_kind: &r.target_kind,
                target_id: &r.target_id,
                before: r.before.as_ref(),
                after: r.after.as_ref(),
                request_id: r.request_id.as_deref(),
                client_ip: r.client_ip.as_deref(),
            },
        );
        if r.prev_hash != prev || r.hash != h {
            return Ok(Err(Broken::Row { seq: r.seq }));
        }
        prev.clone_from(&r.hash);
    }
    Ok(Ok(rows.len() as u64))
}
