//! Operator console sessions in PostgreSQL (`console_sessions`, migration
//! 0016): the console's cookie carries a random secret, the row its SHA-256,
//! the CSRF token and which admin token signed in. Any ingress reads the
//! same rows, so a session works behind a load balancer; ending one (logout,
//! expiry) is immediate everywhere.

use crate::store::{Store, StoreError};

/// Which admin token a session runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionToken {
    /// A token from the config or environment, by the hex SHA-256 of it.
    Config(String),
    /// A token issued from the database, by its public id.
    Database(String),
}

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// What its writes must send in `x-csrf-token`.
    pub csrf: String,
    /// Who signed in.
    pub token: SessionToken,
    /// When it ends, Unix seconds.
    pub expires_at: i64,
}

impl Store {
    /// Starts a session of `token` for `ttl_secs`, found by `id_hash` (the
    /// SHA-256 of the cookie's secret). Sessions ended a day ago go.
    pub async fn create_console_session(
        &self,
        id_hash: &[u8],
        csrf: &str,
        token: &SessionToken,
        ttl_secs: i64,
    ) -> Result<i64, StoreError> {
        sqlx::query("DELETE FROM console_sessions WHERE expires_at < now() - interval '1 day'")
            .execute(self.pool())
            .await?;
        let (kind, reference) = match token {
            SessionToken::Config(r) => ("config", r),
            SessionToken::Database(r) => ("database", r),
        };
        let (expires_at,): (i64,) = sqlx::query_as(
            "INSERT INTO console_sessions (id_hash, csrf, token_kind, token_ref, expires_at) \
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) \
             RETURNING extract(epoch FROM expires_at)::bigint",
        )
        .bind(id_hash)
        .bind(csrf)
        .bind(kind)
        .bind(reference)
        .bind(ttl_secs as f64)
        .fetch_one(self.pool())
        .await?;
        Ok(expires_at)
    }

    /// The live session found by `id_hash`: not ended, not expired.
    pub async fn console_session(
        &self,
        id_hash: &[u8],
    ) -> Result<Option<ConsoleSession>, StoreError> {
        let row: Option<(String, String, String, i64)> = sqlx::query_as(
            "SELECT csrf, token_kind, token_ref, extract(epoch FROM expires_at)::bigint \
             FROM console_sessions \
             WHERE id_hash = $1 AND ended_at IS NULL AND expires_at > now()",
        )
        .bind(id_hash)
        .fetch_optional(self.pool())
        .await?;
        Ok(
            row.map(|(csrf, kind, reference, expires_at)| ConsoleSession {
                csrf,
                token: if kind == "config" {
                    SessionToken::Config(reference)
                } else {
                    SessionToken::Database(reference)
                },
                expires_at,
            }),
        )
    }

    /// Ends the session found by `id_hash`; false when none was live.
    pub async fn end_console_session(&self, id_hash: &[u8]) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE console_sessions SET ended_at = now() \
             WHERE id_hash = $1 AND ended_at IS NULL",
        )
        .bind(id_hash)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }
}
