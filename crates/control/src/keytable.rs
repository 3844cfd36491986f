//! The keys an ingress authenticates from, in memory: loaded whole from the
//! store at start (and after a reconnect), then kept current by applying each
//! change (the NATS feed that carries them is the next slice). A lookup is a
//! hash-map probe and one HMAC: no database on the request path.

use std::collections::HashMap;

use sqlx::FromRow;
use uuid::Uuid;

use crate::key::{self, KeyError, Pepper};
use crate::store::{KeyOwner, Store, StoreError};

/// What the table knows of one key (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// Who the key belongs to.
    pub owner: KeyOwner,
    /// `HMAC-SHA-256(pepper, key)` of the current secret.
    pub secret_hash: Vec<u8>,
    /// The previous secret's hash and until when (Unix ms) it is valid.
    pub previous: Option<(Vec<u8>, i64)>,
    /// When the key expires (Unix ms), if ever.
    pub expires_at_ms: Option<i64>,
}

/// Why a key is refused (all are 401 to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a well-formed key, or its checksum is wrong.
    #[error(transparent)]
    Malformed(#[from] KeyError),
    /// No live key has this public id and secret.
    #[error("unknown or revoked API key")]
    Unknown,
    /// The key expired.
    #[error("the API key has expired")]
    Expired,
}

/// A change to apply (from the store's writes, carried over NATS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// A key was created or changed (rotated, re-scoped): its whole entry.
    Upsert {
        /// Its public id.
        public_id: String,
        /// What authenticates it now.
        entry: KeyEntry,
    },
    /// A key was revoked, or its project or org disabled.
    Remove {
        /// Its public id.
        public_id: String,
    },
}

/// The live keys by public id.
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    by_public_id: HashMap<String, KeyEntry>,
}

#[derive(FromRow)]
struct Row {
    public_id: String,
    key_id: Uuid,
    project_id: Uuid,
    org_id: Uuid,
    secret_hash: Vec<u8>,
    previous_hash: Option<Vec<u8>>,
    previous_until_ms: Option<i64>,
    expires_at_ms: Option<i64>,
}

impl KeyTable {
    /// Every live key in the store: active, of an active project and org.
    pub async fn load(store: &Store) -> Result<Self, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT k.public_id, k.id AS key_id, p.id AS project_id, o.id AS org_id, \
                    k.secret_hash, k.previous_hash, \
                    (extract(epoch FROM k.previous_valid_until) * 1000)::bigint AS previous_until_ms, \
                    (extract(epoch FROM k.expires_at) * 1000)::bigint AS expires_at_ms \
             FROM api_keys k JOIN projects p ON p.id = k.project_id JOIN orgs o ON o.id = p.org_id \
             WHERE k.status = 'active' AND p.status = 'active' AND o.status = 'active'",
        )
        .fetch_all(store.pool())
        .await?;
        let by_public_id = rows
            .into_iter()
            .map(|r| {
                let entry = KeyEntry {
                    owner: KeyOwner {
                        key_id: r.key_id,
                        project_id: r.project_id,
                        org_id: r.org_id,
                    },
                    secret_hash: r.secret_hash,
                    previous: r.previous_hash.zip(r.previous_until_ms),
                    expires_at_ms: r.expires_at_ms,
                };
                (r.public_id, entry)
            })
            .collect();
        Ok(KeyTable { by_public_id })
    }

    /// How many live keys the table holds.
    pub fn len(&self) -> usize {
        self.by_public_id.len()
    }

    /// Whether the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.by_public_id.is_empty()
    }

    /// Applies one change.
    pub fn apply(&mut self, change: KeyChange) {
        match change {
            KeyChange::Upsert { public_id, entry } => {
                self.by_public_id.insert(public_id, entry);
            }
            KeyChange::Remove { public_id } => {
                self.by_public_id.remove(&public_id);
            }
        }
    }

    /// Whose `key` is at `now_ms`, or why it is refused.
    pub fn authenticate(
        &self,
        pepper: &Pepper,
        key: &str,
        now_ms: i64,
    ) -> Result<KeyOwner, Refused> {
        let parsed = key::parse(key)?;
        let entry = self
            .by_public_id
            .get(parsed.public_id)
            .ok_or(Refused::Unknown)?;
        let current = pepper.verify(key, &entry.secret_hash);
        let previous = || {
            entry
                .previous
                .as_ref()
                .is_some_and(|(hash, until)| now_ms < *until && pepper.verify(key, hash))
        };
        if !current && !previous() {
            return Err(Refused::Unknown);
        }
        if entry.expires_at_ms.is_some_and(|t| now_ms >= t) {
            return Err(Refused::Expired);
        }
        Ok(entry.owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pepper() -> Pepper {
        Pepper::new(vec![3u8; 32]).unwrap()
    }

    fn owner() -> KeyOwner {
        KeyOwner {
            key_id: Uuid::now_v7(),
            project_id: Uuid::now_v7(),
            org_id: Uuid::now_v7(),
        }
    }

    #[test]
    fn a_table_authenticates_applies_changes_and_says_why_it_refuses() {
        let p = pepper();
        let old = key::generate("live", &p).unwrap();
        let new = key::with_public_id("live", &old.public_id, &p).unwrap();
        let who = owner();
        let mut t = KeyTable::default();
        t.apply(KeyChange::Upsert {
            public_id: old.public_id.clone(),
            entry: KeyEntry {
                owner: who,
                secret_hash: old.hash.to_vec(),
                previous: None,
                expires_at_ms: None,
            },
        });
        assert_eq!(t.authenticate(&p, &old.key, 0), Ok(who));
        assert_eq!(t.authenticate(&p, &new.key, 0), Err(Refused::Unknown));
        // Rotated with a grace until t = 1,000.
        t.apply(KeyChange::Upsert {
            public_id: old.public_id.clone(),
            entry: KeyEntry {
                owner: who,
                secret_hash: new.hash.to_vec(),
                previous: Some((old.hash.to_vec(), 1_000)),
                expires_at_ms: Some(5_000),
            },
        });
        assert_eq!(t.authenticate(&p, &old.key, 999), Ok(who));
        assert_eq!(t.authenticate(&p, &old.key, 1_000), Err(Refused::Unknown));
        assert_eq!(t.authenticate(&p, &new.key, 4_999), Ok(who));
        assert_eq!(t.authenticate(&p, &new.key, 5_000), Err(Refused::Expired));
        let mut typo = new.key.clone();
        typo.pop();
        assert!(matches!(
            t.authenticate(&p, &typo, 0),
            Err(Refused::Malformed(_))
        ));
        t.apply(KeyChange::Remove {
            public_id: old.public_id.clone(),
        });
        assert_eq!(t.authenticate(&p, &new.key, 0), Err(Refused::Unknown));
        assert!(t.is_empty());
    }
}
