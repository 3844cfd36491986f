//! The tenants' tables in PostgreSQL (sqlx; migrations in
//! `migrations/postgres/`, embedded at build time and applied by
//! [`Store::migrate`], idempotently). Orgs own projects, projects own keys; a
//! key row holds its public id and keyed hash only (see [`crate::key`]).

use ipnet::IpNet;
use serde_json::json;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use uuid::Uuid;

use crate::audit::{self, Actor, Entry};
use crate::feed::{KeyNotice, Notifier};
use crate::key::{self, KeyError, NewKey, Pepper};

/// The PostgreSQL migrations, in order.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

/// Applies the migrations not yet applied to the database at `url`, and
/// names those it applied (`switchyard migrate`).
pub async fn migrate_url(url: &str) -> Result<Vec<String>, StoreError> {
    let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
    let (exists,): (bool,) = sqlx::query_as("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&pool)
        .await?;
    let before: Vec<i64> = if exists {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&pool)
            .await?
    } else {
        Vec::new()
    };
    MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(MIGRATOR
        .iter()
        .filter(|m| !before.contains(&m.version))
        .map(|m| format!("{:04}_{}", m.version, m.description.replace(' ', "_")))
        .collect())
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or could not be reached.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The org, project or key does not exist.
    #[error("no such {0}")]
    NotFound(&'static str),
    /// A key could not be made.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A credential could not be sealed or opened.
    #[error(transparent)]
    Sealed(#[from] crate::sealed::SealError),
    /// The NATS feed of key changes could not be followed.
    #[error("key feed: {0}")]
    Feed(String),
    /// What was asked cannot be (a price, a multiplier, a name), and why.
    #[error("{0}")]
    Invalid(String),
    /// What was asked conflicts with what is there, and why.
    #[error("{0}")]
    Conflict(String),
}

/// Whose a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyOwner {
    /// The key's id (the same across rotations).
    pub key_id: Uuid,
    /// Its project.
    pub project_id: Uuid,
    /// The project's org.
    pub org_id: Uuid,
}

/// What a new key is: its name and what it may do.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySpec {
    /// A name for people (not unique, not secret).
    pub name: String,
    /// The models and routers it may name; none means every one.
    pub models: Option<Vec<String>>,
    /// When it stops working (Unix ms), if ever.
    pub expires_at_ms: Option<i64>,
    /// The client networks it may be used from; empty means any.
    pub allowed_cidrs: Vec<IpNet>,
    /// Free-form data kept with it (a JSON object).
    pub metadata: serde_json::Value,
    /// Its default tags (a JSON object of strings).
    pub tags: serde_json::Value,
}

impl KeySpec {
    /// A key named `name` for every model, from anywhere, forever.
    pub fn named(name: &str) -> Self {
        KeySpec {
            name: name.to_owned(),
            models: None,
            expires_at_ms: None,
            allowed_cidrs: Vec::new(),
            metadata: json!({}),
            tags: json!({}),
        }
    }

    fn scopes(&self) -> serde_json::Value {
        match &self.models {
            Some(m) => json!({ "models": m }),
            None => json!({}),
        }
    }

    fn cidrs(&self) -> Vec<String> {
        self.allowed_cidrs.iter().map(ToString::to_string).collect()
    }
}

/// A key's row as authentication reads it.
#[derive(sqlx::FromRow)]
struct KeyRow {
    key_id: Uuid,
    project_id: Uuid,
    org_id: Uuid,
    secret_hash: Vec<u8>,
    previous_hash: Option<Vec<u8>>,
    in_grace: bool,
}

/// The tenants' tables.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    pepper: Pepper,
    env: String,
    notifier: Option<Notifier>,
}

impl Store {
    /// Connects (a small pool: the control plane is not on the request path).
    /// `env` is the deployment kind new keys name (`live`, `test`, …).
    pub async fn connect(
        options: PgConnectOptions,
        pepper: Pepper,
        env: &str,
    ) -> Result<Self, StoreError> {
        let store = Store::connect_lazy(options, pepper, env)?;
        // One connection now, so that a wrong URL or password fails here.
        drop(store.pool.acquire().await?);
        Ok(store)
    }

    /// The same store, announcing every key change it commits on `notifier`
    /// (so every ingress's key table applies it at once).
    pub fn announcing(self, notifier: Notifier) -> Self {
        Store {
            notifier: Some(notifier),
            ..self
        }
    }

    /// Announces a committed change, if this store announces. A lost
    /// announcement is made good by the tables' periodic resync.
    pub(crate) async fn announce(&self, notice: KeyNotice) {
        if let Some(n) = &self.notifier {
            n.announce(&notice).await;
        }
    }

    /// Announces that the credentials changed, if this store announces.
    pub(crate) async fn announce_credentials(&self) {
        if let Some(n) = &self.notifier {
            n.announce_credentials().await;
        }
    }

    /// The pepper keys are hashed with.
    pub fn pepper(&self) -> &Pepper {
        &self.pepper
    }

    /// A store that connects on first use (so a process can start while the
    /// database is away; the first query waits for it).
    pub fn connect_lazy(
        options: PgConnectOptions,
        pepper: Pepper,
        env: &str,
    ) -> Result<Self, StoreError> {
        if !key::valid_env(env) {
            return Err(KeyError::Malformed.into());
        }
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy_with(options);
        Ok(Store {
            pool,
            pepper,
            env: env.to_owned(),
            notifier: None,
        })
    }

    /// Applies the migrations not applied yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// A new org.
    pub async fn create_org(&self, actor: &Actor, name: &str) -> Result<Uuid, StoreError> {
        let id = Uuid::now_v7();
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO orgs (id, name) VALUES ($1, $2)")
            .bind(id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let entry = Entry {
            action: "org.create",
            target_kind: "org",
            target_id: id.to_string(),
            before: None,
            after: Some(json!({"id": id, "name": name, "status": "active"})),
        };
        audit::append(&mut tx, actor, entry).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// A new project of `org_id`.
    pub async fn create_project(
        &self,
        actor: &Actor,
        org_id: Uuid,
        name: &str,
    ) -> Result<Uuid, StoreError> {
        let id = Uuid::now_v7();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO projects (id, org_id, name) SELECT $1, id, $3 FROM orgs WHERE id = $2",
        )
        .bind(id)
        .bind(org_id)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("org"));
        }
        let entry = Entry {
            action: "project.create",
            target_kind: "project",
            target_id: id.to_string(),
            before: None,
            after: Some(json!({"id": id, "org_id": org_id, "name": name, "status": "active"})),
        };
        audit::append(&mut tx, actor, entry).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// A new key of `project_id`: its id, and the key to show once.
    pub async fn create_key(
        &self,
        actor: &Actor,
        project_id: Uuid,
        spec: &KeySpec,
    ) -> Result<(Uuid, NewKey), StoreError> {
        let id = Uuid::now_v7();
        let new = key::generate(&self.env, &self.pepper)?;
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO api_keys (id, project_id, name, env, public_id, secret_hash, \
                                   scopes, allowed_cidrs, metadata, expires_at, tags) \
             SELECT $1, id, $3, $4, $5, $6, $7, $8, $9, to_timestamp($10::float8 / 1000), $11 \
             FROM projects WHERE id = $2",
        )
        .bind(id)
        .bind(project_id)
        .bind(&spec.name)
        .bind(&self.env)
        .bind(&new.public_id)
        .bind(&new.hash[..])
        .bind(spec.scopes())
        .bind(spec.cidrs())
        .bind(&spec.metadata)
        .bind(spec.expires_at_ms.map(|ms| ms as f64))
        .bind(&spec.tags)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("project"));
        }
        let entry = Entry {
            action: "key.create",
            target_kind: "key",
            target_id: id.to_string(),
            before: None,
            after: Some(
                json!({"id": id, "project_id": project_id, "name": spec.name,
                "public_id": new.public_id, "status": "active", "scopes": spec.scopes(),
                "allowed_cidrs": spec.cidrs(), "metadata": spec.metadata, "tags": spec.tags,
                "expires_at_ms": spec.expires_at_ms}),
            ),
        };
        audit::append(&mut tx, actor, entry).await?;
        tx.commit().await?;
        self.announce(KeyNotice::Changed {
            public_id: new.public_id.clone(),
        })
        .await;
        Ok((id, new))
    }

    /// A new secret for key `id`; the old one stays valid for `grace_seconds`.
    pub async fn rotate_key(
        &self,
        actor: &Actor,
        id: Uuid,
        grace_seconds: u32,
    ) -> Result<NewKey, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT env, public_id FROM api_keys WHERE id = $1 AND status = 'active' FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((env, public_id)) = row else {
            return Err(StoreError::NotFound("key"));
        };
        let new = key::with_public_id(&env, &public_id, &self.pepper)?;
        sqlx::query(
            "UPDATE api_keys SET previous_hash = secret_hash, \
             previous_valid_until = now() + make_interval(secs => $2), \
             secret_hash = $3, updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(f64::from(grace_seconds))
        .bind(&new.hash[..])
        .execute(&mut *tx)
        .await?;
        let entry = Entry {
            action: "key.rotate",
            target_kind: "key",
            target_id: id.to_string(),
            before: Some(json!({"id": id, "public_id": public_id})),
            after: Some(json!({"id": id, "public_id": public_id, "grace_seconds": grace_seconds})),
        };
        audit::append(&mut tx, actor, entry).await?;
        tx.commit().await?;
        self.announce(KeyNotice::Changed { public_id }).await;
        Ok(new)
    }

    /// Revokes key `id` (every secret of it, at once).
    pub async fn revoke_key(&self, actor: &Actor, id: Uuid) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let before: Option<(String, String)> =
            sqlx::query_as("SELECT status, public_id FROM api_keys WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((status, public_id)) = before else {
            return Err(StoreError::NotFound("key"));
        };
        sqlx::query("UPDATE api_keys SET status = 'revoked', updated_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let entry = Entry {
            action: "key.revoke",
            target_kind: "key",
            target_id: id.to_string(),
            before: Some(json!({"id": id, "status": status})),
            after: Some(json!({"id": id, "status": "revoked"})),
        };
        audit::append(&mut tx, actor, entry).await?;
        tx.commit().await?;
        self.announce(KeyNotice::Revoked { public_id }).await;
        Ok(())
    }

    /// Whose `key` is, if it is a live key: well formed (checked before any
    /// query), active, not expired, its org and project active, and its
    /// secret the current one or the previous one within its grace period.
    pub async fn authenticate(&self, key: &str) -> Result<Option<KeyOwner>, StoreError> {
        let parsed = key::parse(key)?;
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT k.id AS key_id, p.id AS project_id, o.id AS org_id, k.secret_hash, \
                    k.previous_hash, coalesce(k.previous_valid_until > now(), false) AS in_grace \
             FROM api_keys k JOIN projects p ON p.id = k.project_id JOIN orgs o ON o.id = p.org_id \
             WHERE k.public_id = $1 AND k.status = 'active' \
               AND (k.expires_at IS NULL OR k.expires_at > now()) \
               AND p.status = 'active' AND o.status = 'active'",
        )
        .bind(parsed.public_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let ok = self.pepper.verify(key, &row.secret_hash)
            || (row.in_grace
                && row
                    .previous_hash
                    .is_some_and(|p| self.pepper.verify(key, &p)));
        Ok(ok.then_some(KeyOwner {
            key_id: row.key_id,
            project_id: row.project_id,
            org_id: row.org_id,
        }))
    }

    /// The pool (for tests and the admin API's transactions).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
