//! Admin tokens issued from the database (`POST /admin/v1/admin-tokens`,
//! owners only), so that a deployment needs just one bootstrap token from its
//! environment. A token is `sy_admin_<public id>_<secret>_<checksum>` (the
//! API key format, env `admin`); the table keeps its public id and keyed
//! hash, never the token, and a revocation takes effect on the next request
//! (admin requests read the table: they are not on the hot path).

use serde::Serialize;
use serde_json::json;
use sqlx::FromRow;
use uuid::Uuid;

use crate::audit::{self, Actor, Entry};
use crate::key::{self, NewKey};
use crate::store::{Store, StoreError};

/// The `env` part of every admin token.
pub const ADMIN_ENV: &str = "admin";

/// An admin token as the admin API shows it: never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow)]
pub struct AdminTokenView {
    /// Its id.
    pub id: Uuid,
    /// Who it is (the audit log's actor).
    pub name: String,
    /// Its role.
    pub role: String,
    /// The org it is limited to; none: the deployment.
    pub org_id: Option<Uuid>,
    /// `sy_admin_<public id>`.
    pub prefix: String,
    /// `active` or `revoked`.
    pub status: String,
    /// Created, Unix seconds.
    pub created_at: i64,
}

/// Who a live database token is.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct TokenOwner {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// The org it is limited to.
    pub org_id: Option<Uuid>,
}

const VIEW: &str = "SELECT id, name, role, org_id, 'sy_admin_' || public_id AS prefix, status, \
    extract(epoch FROM created_at)::bigint AS created_at FROM admin_tokens";

impl Store {
    /// Issues an admin token; returns its view and the token, shown once.
    pub async fn create_admin_token(
        &self,
        actor: &Actor,
        name: &str,
        role: &str,
        org_id: Option<Uuid>,
    ) -> Result<(AdminTokenView, NewKey), StoreError> {
        let id = Uuid::now_v7();
        let new = key::generate(ADMIN_ENV, self.pepper())?;
        let mut tx = self.pool().begin().await?;
        if let Some(org) = org_id {
            let found: Option<(Uuid,)> = sqlx::query_as("SELECT id FROM orgs WHERE id = $1")
                .bind(org)
                .fetch_optional(&mut *tx)
                .await?;
            if found.is_none() {
                return Err(StoreError::NotFound("org"));
            }
        }
        sqlx::query(
            "INSERT INTO admin_tokens (id, name, role, org_id, public_id, secret_hash) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(name)
        .bind(role)
        .bind(org_id)
        .bind(&new.public_id)
        .bind(&new.hash[..])
        .execute(&mut *tx)
        .await?;
        let entry = Entry {
            action: "admin_token.create",
            target_kind: "admin_token",
            target_id: id.to_string(),
            before: None,
            after: Some(
                json!({"id": id, "name": name, "role": role, "org_id": org_id,
                "public_id": new.public_id, "status": "active"}),
            ),
        };
        audit::append(&mut tx, actor, entry).await?;
        tx.commit().await?;
        Ok((self.admin_token(id).await?, new))
    }

    /// One admin token's view.
    pub async fn admin_token(&self, id: Uuid) -> Result<AdminTokenView, StoreError> {
        crate::views::one_by_id(self, VIEW, id, "admin token").await
    }

    /// Every admin token's view: all, or one org's.
    pub async fn admin_tokens(
        &self,
        org_id: Option<Uuid>,
    ) -> Result<Vec<AdminTokenView>, StoreError> {
        crate::views::all_of_org(self, VIEW, org_id).await
    }

    /// Revokes an admin token: refused from its next request on.
    pub async fn revoke_admin_token(&self, actor: &Actor, id: Uuid) -> Result<(), StoreError> {
        let before = self.admin_token(id).await?;
        let mut tx = self.pool().begin().await?;
        sqlx::query("UPDATE admin_tokens SET status = 'revoked', updated_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let entry = Entry {
            action: "admin_token.revoke",
            target_kind: "admin_token",
            target_id: id.to_string(),
            before: Some(json!({"id": id, "status": before.status})),
            after: Some(json!({"id": id, "status": "revoked"})),
        };
        audit::append(&mut tx, actor, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Who `token` is, if it is a live admin token from the database: well
    /// formed (checked before any query), active, its org (if any) active.
    pub async fn admin_token_owner(&self, token: &str) -> Result<Option<TokenOwner>, StoreError> {
        let Ok(parsed) = key::parse(token) else {
            return Ok(None);
        };
        if parsed.env != ADMIN_ENV {
            return Ok(None);
        }
        let row: Option<(String, String, Option<Uuid>, Vec<u8>)> = sqlx::query_as(
            "SELECT t.name, t.role, t.org_id, t.secret_hash FROM admin_tokens t \
             LEFT JOIN orgs o ON o.id = t.org_id \
             WHERE t.public_id = $1 AND t.status = 'active' \
               AND (t.org_id IS NULL OR o.status = 'active')",
        )
        .bind(parsed.public_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.and_then(|(name, role, org_id, hash)| {
            self.pepper()
                .verify(token, &hash)
                .then_some(TokenOwner { name, role, org_id })
        }))
    }

    /// Who the live token with `public_id` is (a console session's token,
    /// verified when the session began), if it is still active.
    pub async fn admin_token_owner_by_public_id(
        &self,
        public_id: &str,
    ) -> Result<Option<TokenOwner>, StoreError> {
        let row: Option<(String, String, Option<Uuid>)> = sqlx::query_as(
            "SELECT t.name, t.role, t.org_id FROM admin_tokens t \
             LEFT JOIN orgs o ON o.id = t.org_id \
             WHERE t.public_id = $1 AND t.status = 'active' \
               AND (t.org_id IS NULL OR o.status = 'active')",
        )
        .bind(public_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|(name, role, org_id)| TokenOwner { name, role, org_id }))
    }
}
