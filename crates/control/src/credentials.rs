//! Provider credentials in the store: set (sealed, audited without the
//! secret), listed as metadata, deleted, opened for the processes that call
//! providers, and re-sealed under a new master key while everything runs.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde_json::json;
use sqlx::FromRow;
use uuid::Uuid;

use crate::audit::{self, Actor, Entry};
use crate::sealed::{Keyring, SealError, Sealed, binding};
use crate::store::{Store, StoreError};

/// A credential as the admin API shows it: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow)]
pub struct CredentialView {
    /// Its id.
    pub id: Uuid,
    /// The org it belongs to; none: every org without one of its own.
    pub org_id: Option<Uuid>,
    /// The provider entry (config name) it authenticates to.
    pub provider: String,
    /// The master key version it is sealed under.
    pub key_version: i32,
    /// 12 hex digits that tell two secrets apart, revealing neither.
    pub fingerprint: String,
    /// Created, Unix seconds.
    pub created_at: i64,
    /// Last set, Unix seconds.
    pub updated_at: i64,
}

/// One opened credential, for a process that calls providers.
#[derive(Clone, PartialEq, Eq)]
pub struct Opened {
    /// Its org; none: global.
    pub org_id: Option<Uuid>,
    /// Its provider entry.
    pub provider: String,
    /// The secret.
    pub secret: String,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("org_id", &self.org_id)
            .field("provider", &self.provider)
            .field("secret", &"***")
            .finish()
    }
}

#[derive(FromRow)]
struct SealedRow {
    id: Uuid,
    org_id: Option<Uuid>,
    provider: String,
    key_version: i32,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

impl SealedRow {
    fn open(&self, keys: &Keyring) -> Result<String, StoreError> {
        let sealed = Sealed {
            version: self.key_version,
            nonce: self.nonce.clone(),
            ciphertext: self.ciphertext.clone(),
        };
        let bytes = keys.open(&binding(self.org_id, &self.provider), &sealed)?;
        String::from_utf8(bytes).map_err(|_| StoreError::Sealed(SealError::Open))
    }
}

const VIEW: &str = "SELECT id, org_id, provider, key_version, fingerprint, \
    extract(epoch FROM created_at)::bigint AS created_at, \
    extract(epoch FROM updated_at)::bigint AS updated_at FROM provider_credentials";

/// Every credential in the database at `pool`, opened.
pub async fn open_all(pool: &sqlx::PgPool, keys: &Keyring) -> Result<Vec<Opened>, StoreError> {
    let rows: Vec<SealedRow> = sqlx::query_as(
        "SELECT id, org_id, provider, key_version, nonce, ciphertext FROM provider_credentials",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Opened {
                org_id: r.org_id,
                provider: r.provider.clone(),
                secret: r.open(keys)?,
            })
        })
        .collect()
}

/// Secrets by org (none: global), then by provider.
type ByOrg = HashMap<Option<Uuid>, HashMap<String, Arc<str>>>;

/// The opened credentials a process calls providers with, by org and
/// provider; kept current by [`follow`].
#[derive(Default)]
pub struct CredentialTable {
    /// By org (none: global), then by provider.
    by: RwLock<ByOrg>,
}

impl std::fmt::Debug for CredentialTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n: usize = self
            .by
            .read()
            .map_or(0, |m| m.values().map(HashMap::len).sum());
        write!(f, "CredentialTable({n} credentials)")
    }
}

impl CredentialTable {
    /// The secret a call of `org_id` to `provider` uses: the org's own, else
    /// the global one; none: the provider entry's from the config.
    pub fn resolve(&self, org_id: Option<Uuid>, provider: &str) -> Option<Arc<str>> {
        let by = self.by.read().unwrap_or_else(|p| p.into_inner());
        let of = |org: Option<Uuid>| by.get(&org).and_then(|m| m.get(provider));
        org_id
            .and_then(|o| of(Some(o)))
            .or_else(|| of(None))
            .cloned()
    }

    fn replace(&self, opened: Vec<Opened>) {
        let mut map = ByOrg::new();
        for o in opened {
            map.entry(o.org_id)
                .or_default()
                .insert(o.provider, Arc::from(o.secret.as_str()));
        }
        *self.by.write().unwrap_or_else(|p| p.into_inner()) = map;
    }
}

/// Loads every credential from `pool` (failing if they cannot be opened: a
/// worker must not call an org's provider with someone else's key), then
/// reloads them whenever one is announced on `subject`, after a reconnect,
/// and every `resync`, in a task that ends when the table is dropped.
pub async fn follow(
    pool: sqlx::PgPool,
    keys: Keyring,
    client: async_nats::Client,
    subject: String,
    resync: std::time::Duration,
) -> Result<Arc<CredentialTable>, StoreError> {
    let mut sub = client
        .subscribe(subject)
        .await
        .map_err(|e| StoreError::Feed(e.to_string()))?;
    let table = Arc::new(CredentialTable::default());
    table.replace(open_all(&pool, &keys).await?);
    let weak = Arc::downgrade(&table);
    tokio::spawn(async move {
        use futures::StreamExt;
        let stats = client.statistics();
        let connects = || stats.connects.load(std::sync::atomic::Ordering::Relaxed);
        let mut seen = connects();
        let mut since = std::time::Duration::ZERO;
        let tick = std::time::Duration::from_secs(1);
        loop {
            let reload = tokio::select! {
                msg = sub.next() => {
                    if msg.is_none() {
                        return;
                    }
                    true
                }
                () = tokio::time::sleep(tick) => {
                    since += tick;
                    let now = connects();
                    let reconnected = now != seen;
                    seen = now;
                    reconnected || since >= resync
                }
            };
            let Some(table) = weak.upgrade() else {
                return;
            };
            if reload {
                match open_all(&pool, &keys).await {
                    Ok(opened) => {
                        table.replace(opened);
                        since = std::time::Duration::ZERO;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "Reloading provider credentials failed; retrying.");
                    }
                }
            }
        }
    });
    Ok(table)
}

impl Store {
    fn fingerprint(&self, secret: &str) -> String {
        let h = self.pepper().hash(&format!("credential:{secret}"));
        h[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Sets the credential of `provider` for `org_id` (none: global),
    /// replacing any there was; the audit row names its fingerprint, never
    /// the secret.
    pub async fn set_credential(
        &self,
        actor: &Actor,
        keys: &Keyring,
        org_id: Option<Uuid>,
        provider: &str,
        secret: &str,
    ) -> Result<CredentialView, StoreError> {
        let sealed = keys.seal(&binding(org_id, provider), secret.as_bytes())?;
        let fingerprint = self.fingerprint(secret);
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
        let before: Option<(Uuid, String)> = sqlx::query_as(
            "SELECT id, fingerprint FROM provider_credentials \
             WHERE provider = $1 AND org_id IS NOT DISTINCT FROM $2 FOR UPDATE",
        )
        .bind(provider)
        .bind(org_id)
        .fetch_optional(&mut *tx)
        .await?;
        let id = match &before {
            Some((id, _)) => {
                sqlx::query(
                    "UPDATE provider_credentials SET key_version = $2, nonce = $3, \
                     ciphertext = $4, fingerprint = $5, updated_at = now() WHERE id = $1",
                )
                .bind(id)
                .bind(sealed.version)
                .bind(&sealed.nonce)
                .bind(&sealed.ciphertext)
                .bind(&fingerprint)
                .execute(&mut *tx)
                .await?;
                *id
            }
            None => {
                let id = Uuid::now_v7();
                sqlx::query(
                    "INSERT INTO provider_credentials \
                     (id, org_id, provider, key_version, nonce, ciphertext, fingerprint) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(id)
                .bind(org_id)
                .bind(provider)
                .bind(sealed.version)
                .bind(&sealed.nonce)
                .bind(&sealed.ciphertext)
                .bind(&fingerprint)
                .execute(&mut *tx)
                .await?;
                id
            }
        };
        let entry = Entry {
            action: "credential.set",
            target_kind: "credential",
            target_id: id.to_string(),
            before: before
                .map(|(_, f)| json!({"provider": provider, "org_id": org_id, "fingerprint": f})),
            after: Some(json!({"provider": provider, "org_id": org_id,
                "fingerprint": fingerprint, "key_version": sealed.version})),
        };
        audit::append(&mut tx, actor, entry).await?;
        tx.commit().await?;
        self.announce_credentials().await;
        self.credential(id).await
    }

    /// One credential's metadata.
    pub async fn credential(&self, id: Uuid) -> Result<CredentialView, StoreError> {
        crate::views::one_by_id(self, VIEW, id, "credential").await
    }

    /// Every credential's metadata: all, or one org's (`Some(org)`) only.
    pub async fn credentials(
        &self,
        org_id: Option<Uuid>,
    ) -> Result<Vec<CredentialView>, StoreError> {
        crate::views::all_of_org(self, VIEW, org_id).await
    }

    /// Deletes a credential (calls fall back to the global one, then the
    /// config's).
    pub async fn delete_credential(&self, actor: &Actor, id: Uuid) -> Result<(), StoreError> {
        let before = self.credential(id).await?;
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM provider_credentials WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let entry = Entry {
            action: "credential.delete",
            target_kind: "credential",
            target_id: id.to_string(),
            before: Some(json!({"provider": before.provider, "org_id": before.org_id,
                "fingerprint": before.fingerprint})),
            after: None,
        };
        audit::append(&mut tx, actor, entry).await?;
        tx.commit().await?;
        self.announce_credentials().await;
        Ok(())
    }

    /// Every credential, opened (for a process that calls providers).
    pub async fn open_credentials(&self, keys: &Keyring) -> Result<Vec<Opened>, StoreError> {
        open_all(self.pool(), keys).await
    }

    /// Re-seals, under the keyring's current master key, up to `batch`
    /// credentials sealed under another; returns how many. Each row in its
    /// own short transaction (rows another process is re-sealing are
    /// skipped), so calls keep reading every row meanwhile.
    pub async fn reseal_credentials(&self, keys: &Keyring, batch: u32) -> Result<u64, StoreError> {
        let mut done = 0;
        for _ in 0..batch {
            let mut tx = self.pool().begin().await?;
            let row: Option<SealedRow> = sqlx::query_as(
                "SELECT id, org_id, provider, key_version, nonce, ciphertext \
                 FROM provider_credentials WHERE key_version <> $1 \
                 LIMIT 1 FOR UPDATE SKIP LOCKED",
            )
            .bind(keys.current_version())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                break;
            };
            let secret = row.open(keys)?;
            let sealed = keys.seal(&binding(row.org_id, &row.provider), secret.as_bytes())?;
            sqlx::query(
                "UPDATE provider_credentials SET key_version = $2, nonce = $3, ciphertext = $4 \
                 WHERE id = $1",
            )
            .bind(row.id)
            .bind(sealed.version)
            .bind(&sealed.nonce)
            .bind(&sealed.ciphertext)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            done += 1;
        }
        Ok(done)
    }
}
