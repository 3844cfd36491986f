//! Reading and changing tenants as the admin API shows them: orgs, projects
//! and keys as JSON-ready views (never a secret or a hash), listed in pages
//! by id (UUIDv7: creation order), and updated with their audit row in the
//! same transaction.

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::FromRow;
use uuid::Uuid;

use crate::audit::{self, Actor, Entry};
use crate::feed::KeyNotice;
use crate::store::{Store, StoreError};

/// An org as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct OrgView {
    /// Its id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// `active` or `disabled`.
    pub status: String,
    /// Its rate limits: `{"rpm", "tpm", "concurrency"}`, each optional.
    pub limits: Value,
    /// Its rate limits per model: `{"<model>": {...}}`.
    pub model_limits: Value,
    /// Its budget: `{"usd": "12.50", "period": "month"}`, or null.
    pub budget: Option<Value>,
    /// Whether its requests are admitted against its prepaid balance.
    pub prepaid: bool,
    /// Created, Unix seconds.
    pub created_at: i64,
    /// Last changed, Unix seconds.
    pub updated_at: i64,
}

/// A project as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct ProjectView {
    /// Its id.
    pub id: Uuid,
    /// Its org.
    pub org_id: Uuid,
    /// Its name.
    pub name: String,
    /// `active` or `disabled`.
    pub status: String,
    /// Its rate limits: `{"rpm", "tpm", "concurrency"}`, each optional.
    pub limits: Value,
    /// Its rate limits per model: `{"<model>": {...}}`.
    pub model_limits: Value,
    /// Its budget: `{"usd": "12.50", "period": "month"}`, or null.
    pub budget: Option<Value>,
    /// Whether a request its budgets cannot pay for in full gets a lower
    /// `max_tokens` (else 402).
    pub lower_max_tokens: bool,
    /// What the requests of one `x-switchyard-session` may spend together:
    /// `{"usd": "1.00", "period": "none"}`, or null.
    pub session_budget: Option<Value>,
    /// The response cache for its requests: on (true), off (false), or as
    /// the config's `[cache] models` say (null).
    pub cache: Option<bool>,
    /// Created, Unix seconds.
    pub created_at: i64,
    /// Last changed, Unix seconds.
    pub updated_at: i64,
}

/// A key as the admin API shows it: never the secret, never its hash.
#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct KeyView {
    /// Its id (the same across rotations).
    pub id: Uuid,
    /// Its project.
    pub project_id: Uuid,
    /// The project's org.
    pub org_id: Uuid,
    /// Its name.
    pub name: String,
    /// What identifies it in listings: `sy_<env>_<public id>`.
    pub prefix: String,
    /// `active` or `revoked`.
    pub status: String,
    /// `{"models": [...]}`, or `{}` for every model.
    pub scopes: Value,
    /// Client networks it may be used from; empty: any.
    pub allowed_cidrs: Vec<String>,
    /// Free-form data.
    pub metadata: Value,
    /// Its default tags: `{"<key>": "<value>"}`.
    pub tags: Value,
    /// Its rate limits: `{"rpm", "tpm", "concurrency"}`, each optional.
    pub limits: Value,
    /// Its rate limits per model: `{"<model>": {...}}`.
    pub model_limits: Value,
    /// Its budget: `{"usd": "12.50", "period": "month"}`, or null.
    pub budget: Option<Value>,
    /// When it stops working, Unix seconds, if ever.
    pub expires_at: Option<i64>,
    /// Until when the previous secret of a rotation works, Unix seconds.
    pub previous_valid_until: Option<i64>,
    /// Created, Unix seconds.
    pub created_at: i64,
    /// Last changed, Unix seconds.
    pub updated_at: i64,
}

/// One page of a list, in id order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    /// The items.
    pub data: Vec<T>,
    /// Whether more follow the last one.
    pub has_more: bool,
}

/// Where a page starts and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageAt {
    /// Items with ids after this one.
    pub after: Option<Uuid>,
    /// At most this many (1 to 100).
    pub limit: u32,
}

impl<T> Page<T> {
    fn of(mut rows: Vec<T>, limit: u32) -> Self {
        let has_more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        Page {
            data: rows,
            has_more,
        }
    }
}

/// Which items a list shows: an org's, a project's, or all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Filter {
    /// Only this org's.
    pub org_id: Option<Uuid>,
    /// Only this project's.
    pub project_id: Option<Uuid>,
}

const ORG: &str = "SELECT id, name, status, limits, model_limits, budget, prepaid, \
    extract(epoch FROM created_at)::bigint AS created_at, \
    extract(epoch FROM updated_at)::bigint AS updated_at FROM orgs";
const PROJECT: &str = "SELECT id, org_id, name, status, limits, model_limits, budget, lower_max_tokens, session_budget, cache, \
    extract(epoch FROM created_at)::bigint AS created_at, \
    extract(epoch FROM updated_at)::bigint AS updated_at FROM projects";
const KEY: &str = "SELECT k.id, k.project_id, p.org_id, k.name, \
    'sy_' || k.env || '_' || k.public_id AS prefix, k.status, k.scopes, k.allowed_cidrs, \
    k.metadata, k.tags, k.limits, k.model_limits, k.budget, \
    extract(epoch FROM k.expires_at)::bigint AS expires_at, \
    extract(epoch FROM k.previous_valid_until)::bigint AS previous_valid_until, \
    extract(epoch FROM k.created_at)::bigint AS created_at, \
    extract(epoch FROM k.updated_at)::bigint AS updated_at \
    FROM api_keys k JOIN projects p ON p.id = k.project_id";

/// Whose limits to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitTarget {
    /// An org's.
    Org(Uuid),
    /// A project's.
    Project(Uuid),
    /// A key's.
    Key(Uuid),
}

/// A change of an org's, project's or key's limits (fields left out stay as
/// they are), as checked JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitChange {
    /// `{"rpm", "tpm", "concurrency"}`.
    pub limits: Option<Value>,
    /// `{"<model>": {...}}`.
    pub model_limits: Option<Value>,
    /// `{"usd", "period"}`, or null to remove it.
    pub budget: Option<Value>,
    /// A project's: lower `max_tokens` to what its budgets can pay for.
    pub lower_max_tokens: Option<bool>,
    /// An org's: admit its requests against its prepaid balance.
    pub prepaid: Option<bool>,
    /// A project's session cap (`{"usd", "period": "none"}`), or null to remove it.
    pub session_budget: Option<Value>,
    /// A project's response cache: on, off, or null (the config decides).
    pub cache: Option<Option<bool>>,
}

impl LimitChange {
    /// Whether it changes anything.
    pub fn given(&self) -> bool {
        self.limits.is_some()
            || self.model_limits.is_some()
            || self.budget.is_some()
            || self.lower_max_tokens.is_some()
            || self.prepaid.is_some()
            || self.session_budget.is_some()
            || self.cache.is_some()
    }
}

/// A change to an org or a project (fields left out stay as they are).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rename {
    /// A new name.
    pub name: Option<String>,
    /// `active` or `disabled`.
    pub status: Option<String>,
}

/// A change to a key (fields left out stay as they are).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyPatch {
    /// A new name.
    pub name: Option<String>,
    /// New scopes: `Some(None)` lifts them, `Some(Some(models))` sets them.
    pub models: Option<Option<Vec<String>>>,
    /// A new expiry (Unix ms), or `Some(None)` for never.
    pub expires_at_ms: Option<Option<i64>>,
    /// New allowed networks.
    pub allowed_cidrs: Option<Vec<ipnet::IpNet>>,
    /// New metadata.
    pub metadata: Option<Value>,
    /// New default tags (a JSON object of strings).
    pub tags: Option<Value>,
}

/// The row `select` (a `SELECT … FROM t` without a `WHERE`) has for `id`,
/// or `NotFound(what)`.
pub(crate) async fn one_by_id<T>(
    store: &Store,
    select: &str,
    id: Uuid,
    what: &'static str,
) -> Result<T, StoreError>
where
    T: for<'r> FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(&format!("{select} WHERE id = $1"))
        .bind(id)
        .fetch_optional(store.pool())
        .await?
        .ok_or(StoreError::NotFound(what))
}

/// Every row `select` has (of `org_id` when given), in id order.
pub(crate) async fn all_of_org<T>(
    store: &Store,
    select: &str,
    org_id: Option<Uuid>,
) -> Result<Vec<T>, StoreError>
where
    T: for<'r> FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    Ok(sqlx::query_as(&format!(
        "{select} WHERE ($1::uuid IS NULL OR org_id = $1) ORDER BY id"
    ))
    .bind(org_id)
    .fetch_all(store.pool())
    .await?)
}

impl Store {
    /// One org.
    pub async fn org(&self, id: Uuid) -> Result<OrgView, StoreError> {
        one_by_id(self, ORG, id, "org").await
    }

    /// A page of orgs (only `filter.org_id` when set).
    pub async fn orgs(&self, filter: Filter, at: PageAt) -> Result<Page<OrgView>, StoreError> {
        let rows = sqlx::query_as(&format!(
            "{ORG} WHERE ($1::uuid IS NULL OR id > $1) AND ($2::uuid IS NULL OR id = $2) \
             ORDER BY id LIMIT $3"
        ))
        .bind(at.after)
        .bind(filter.org_id)
        .bind(i64::from(at.limit) + 1)
        .fetch_all(self.pool())
        .await?;
        Ok(Page::of(rows, at.limit))
    }

    /// One project.
    pub async fn project(&self, id: Uuid) -> Result<ProjectView, StoreError> {
        one_by_id(self, PROJECT, id, "project").await
    }

    /// A page of projects.
    pub async fn projects(
        &self,
        filter: Filter,
        at: PageAt,
    ) -> Result<Page<ProjectView>, StoreError> {
        let rows = sqlx::query_as(&format!(
            "{PROJECT} WHERE ($1::uuid IS NULL OR id > $1) AND ($2::uuid IS NULL OR org_id = $2) \
             AND ($3::uuid IS NULL OR id = $3) ORDER BY id LIMIT $4"
        ))
        .bind(at.after)
        .bind(filter.org_id)
        .bind(filter.project_id)
        .bind(i64::from(at.limit) + 1)
        .fetch_all(self.pool())
        .await?;
        Ok(Page::of(rows, at.limit))
    }

    /// One key.
    pub async fn key(&self, id: Uuid) -> Result<KeyView, StoreError> {
        sqlx::query_as(&format!("{KEY} WHERE k.id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound("key"))
    }

    /// A page of keys.
    pub async fn keys(&self, filter: Filter, at: PageAt) -> Result<Page<KeyView>, StoreError> {
        let rows = sqlx::query_as(&format!(
            "{KEY} WHERE ($1::uuid IS NULL OR k.id > $1) AND ($2::uuid IS NULL OR p.org_id = $2) \
             AND ($3::uuid IS NULL OR k.project_id = $3) ORDER BY k.id LIMIT $4"
        ))
        .bind(at.after)
        .bind(filter.org_id)
        .bind(filter.project_id)
        .bind(i64::from(at.limit) + 1)
        .fetch_all(self.pool())
        .await?;
        Ok(Page::of(rows, at.limit))
    }

    /// Renames or disables (re-enables) an org; a status change reloads every
    /// ingress's keys (the org's keys stop or start working).
    pub async fn update_org(
        &self,
        actor: &Actor,
        id: Uuid,
        change: &Rename,
    ) -> Result<OrgView, StoreError> {
        self.update_owner(actor, "org", id, change).await?;
        self.org(id).await
    }

    /// Renames or disables (re-enables) a project.
    pub async fn update_project(
        &self,
        actor: &Actor,
        id: Uuid,
        change: &Rename,
    ) -> Result<ProjectView, StoreError> {
        self.update_owner(actor, "project", id, change).await?;
        self.project(id).await
    }

    async fn update_owner(
        &self,
        actor: &Actor,
        kind: &'static str,
        id: Uuid,
        change: &Rename,
    ) -> Result<(), StoreError> {
        let table = if kind == "org" { "orgs" } else { "projects" };
        let mut tx = self.pool().begin().await?;
        let before: Option<(String, String)> = sqlx::query_as(&format!(
            "SELECT name, status FROM {table} WHERE id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((name, status)) = before else {
            return Err(StoreError::NotFound(kind));
        };
        let new_name = change.name.clone().unwrap_or_else(|| name.clone());
        let new_status = change.status.clone().unwrap_or_else(|| status.clone());
        sqlx::query(&format!(
            "UPDATE {table} SET name = $2, status = $3, updated_at = now() WHERE id = $1"
        ))
        .bind(id)
        .bind(&new_name)
        .bind(&new_status)
        .execute(&mut *tx)
        .await?;
        let action = format!("{kind}.update");
        let entry = Entry {
            action: &action,
            target_kind: kind,
            target_id: id.to_string(),
            before: Some(json!({"id": id, "name": name, "status": status})),
            after: Some(json!({"id": id, "name": new_name, "status": new_status})),
        };
        audit::append(&mut tx, actor, entry).await?;
        tx.commit().await?;
        if new_status != status {
            self.announce(KeyNotice::All).await;
        }
        Ok(())
    }

    /// Changes a key's name, scopes, expiry, networks or metadata.
    pub async fn update_key(
        &self,
        actor: &Actor,
        id: Uuid,
        patch: &KeyPatch,
    ) -> Result<KeyView, StoreError> {
        let before = self.key(id).await?;
        let mut tx = self.pool().begin().await?;
        let scopes = patch.models.as_ref().map(|m| match m {
            Some(models) => json!({ "models": models }),
            None => json!({}),
        });
        let cidrs: Option<Vec<String>> = patch
            .allowed_cidrs
            .as_ref()
            .map(|c| c.iter().map(ToString::to_string).collect());
        let (set_expiry, expiry) = match patch.expires_at_ms {
            Some(e) => (true, e.map(|ms| ms as f64)),
            None => (false, None),
        };
        let done = sqlx::query(
            "UPDATE api_keys SET name = coalesce($2, name), scopes = coalesce($3, scopes), \
             allowed_cidrs = coalesce($4, allowed_cidrs), metadata = coalesce($5, metadata), \
             expires_at = CASE WHEN $6 THEN to_timestamp($7::float8 / 1000) ELSE expires_at END, \
             tags = coalesce($8, tags), \
             updated_at = now() WHERE id = $1 AND status = 'active'",
        )
        .bind(id)
        .bind(&patch.name)
        .bind(&scopes)
        .bind(&cidrs)
        .bind(&patch.metadata)
        .bind(set_expiry)
        .bind(expiry)
        .bind(&patch.tags)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("key"));
        }
        let after: KeyView = sqlx::query_as(&format!("{KEY} WHERE k.id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let entry = Entry {
            action: "key.update",
            target_kind: "key",
            target_id: id.to_string(),
            before: Some(serde_json::to_value(&before).unwrap_or(Value::Null)),
            after: Some(serde_json::to_value(&after).unwrap_or(Value::Null)),
        };
        audit::append(&mut tx, actor, entry).await?;
        tx.commit().await?;
        let public_id = after
            .prefix
            .rsplit('_')
            .next()
            .unwrap_or_default()
            .to_owned();
        self.announce(KeyNotice::Changed { public_id }).await;
        Ok(after)
    }

    /// Sets the rate limits and budget of an org, project or key (`limits`,
    /// `model_limits` and `budget`, each replacing what was there when given;
    /// a null `budget` removes it; `lower_max_tokens` for a project); every
    /// ingress applies them at once.
    pub async fn set_limits(
        &self,
        actor: &Actor,
        target: LimitTarget,
        change: &LimitChange,
    ) -> Result<(), StoreError> {
        let (table, kind, id) = match target {
            LimitTarget::Org(id) => ("orgs", "org", id),
            LimitTarget::Project(id) => ("projects", "project", id),
            LimitTarget::Key(id) => ("api_keys", "key", id),
        };
        // The kind's own switch: a project's `lower_max_tokens`, an org's
        // `prepaid` (a key has none: a constant stands in).
        let flag = match kind {
            "project" => "lower_max_tokens",
            "org" => "prepaid",
            _ => "true",
        };
        let mut tx = self.pool().begin().await?;
        let before: Option<(Value, Value, Option<Value>, bool)> = sqlx::query_as(&format!(
            "SELECT limits, model_limits, budget, {flag} FROM {table} WHERE id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((old_limits, old_models, old_budget, old_flag)) = before else {
            return Err(StoreError::NotFound(kind));
        };
        let new_limits = change.limits.clone().unwrap_or_else(|| old_limits.clone());
        let new_models = change
            .model_limits
            .clone()
            .unwrap_or_else(|| old_models.clone());
        let new_budget = match &change.budget {
            Some(Value::Null) => None,
            Some(b) => Some(b.clone()),
            None => old_budget.clone(),
        };
        let new_flag = match kind {
            "project" => change.lower_max_tokens.unwrap_or(old_flag),
            _ => change.prepaid.unwrap_or(old_flag),
        };
        let set_flag = match kind {
            "project" => ", lower_max_tokens = $5",
            "org" => ", prepaid = $5",
            _ => "",
        };
        sqlx::query(&format!(
            "UPDATE {table} SET limits = $2, model_limits = $3, budget = $4{set_flag}, updated_at = now() WHERE id = $1"
        ))
        .bind(id)
        .bind(&new_limits)
        .bind(&new_models)
        .bind(&new_budget)
        .bind(new_flag)
        .execute(&mut *tx)
        .await?;
        if let (LimitTarget::Project(_), Some(session)) = (target, &change.session_budget) {
            let session = (!session.is_null()).then_some(session);
            sqlx::query("UPDATE projects SET session_budget = $2 WHERE id = $1")
                .bind(id)
                .bind(session)
                .execute(&mut *tx)
                .await?;
        }
        if let (LimitTarget::Project(_), Some(cache)) = (target, change.cache) {
            sqlx::query("UPDATE projects SET cache = $2 WHERE id = $1")
                .bind(id)
                .bind(cache)
                .execute(&mut *tx)
                .await?;
        }
        let action = format!("{kind}.limits");
        let state = |l: &Value, m: &Value, b: &Option<Value>, flag: bool| {
            let mut v = json!({"limits": l, "model_limits": m, "budget": b});
            match kind {
                "project" => v["lower_max_tokens"] = json!(flag),
                "org" => v["prepaid"] = json!(flag),
                _ => {}
            }
            v
        };
        let entry = Entry {
            action: &action,
            target_kind: kind,
            target_id: id.to_string(),
            before: Some(state(&old_limits, &old_models, &old_budget, old_flag)),
            after: Some({
                let mut after = state(&new_limits, &new_models, &new_budget, new_flag);
                if let Some(session) = &change.session_budget {
                    after["session_budget"] = session.clone();
                }
                if let Some(cache) = change.cache {
                    after["cache"] = json!(cache);
                }
                after
            }),
        };
        audit::append(&mut tx, actor, entry).await?;
        tx.commit().await?;
        match target {
            LimitTarget::Key(id) => {
                let key = self.key(id).await?;
                let public_id = key.prefix.rsplit('_').next().unwrap_or_default().to_owned();
                self.announce(KeyNotice::Changed { public_id }).await;
            }
            _ => self.announce(KeyNotice::All).await,
        }
        Ok(())
    }

    /// Records one admin action that changes nothing in this database (a
    /// target forced over NATS) in the audit log.
    pub async fn audit_event(&self, actor: &Actor, entry: Entry<'_>) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        audit::append(&mut tx, actor, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A page of the audit log, newest first, filtered.
    pub async fn audit_rows(&self, q: &AuditQuery) -> Result<Vec<audit::Row>, StoreError> {
        let rows = sqlx::query_as(&format!(
            "SELECT {} FROM audit_log WHERE ($1::bigint IS NULL OR seq < $1) \
             AND ($2::text IS NULL OR target_kind = $2) AND ($3::text IS NULL OR target_id = $3) \
             AND ($4::text IS NULL OR actor = $4) AND ($5::text IS NULL OR action = $5) \
             ORDER BY seq DESC LIMIT $6",
            audit::ROW_COLUMNS
        ))
        .bind(q.before_seq)
        .bind(&q.target_kind)
        .bind(&q.target_id)
        .bind(&q.actor)
        .bind(&q.action)
        .bind(i64::from(q.limit))
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }
}

/// Which audit rows to show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Rows before this one (the next page of a newest-first list).
    pub before_seq: Option<i64>,
    /// Only about this kind of thing.
    pub target_kind: Option<String>,
    /// Only about this thing.
    pub target_id: Option<String>,
    /// Only by this actor.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// At most this many.
    pub limit: u32,
}
