//! The keys an ingress authenticates from, in memory: loaded whole from the
//! store at start (and after a reconnect), then kept current by applying each
//! change ([`crate::feed`] carries them over NATS). A lookup is a hash-map
//! probe and one HMAC: no database on the request path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use sqlx::FromRow;
use uuid::Uuid;

use crate::key::{self, KeyError, Pepper};
use crate::store::{KeyOwner, Store, StoreError};

/// What a key may do, once authenticated: whose it is, which models and
/// routers it may name, from which client networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Who the key belongs to.
    pub owner: KeyOwner,
    /// The models and routers (`auto`, `auto:<name>`) it may name; none
    /// means every one.
    pub models: Option<Box<[String]>>,
    /// The client networks it may be used from; empty means any.
    pub allowed_cidrs: Box<[IpNet]>,
}

impl Grant {
    /// A grant for any model, from anywhere.
    pub fn unrestricted(owner: KeyOwner) -> Self {
        Grant {
            owner,
            models: None,
            allowed_cidrs: Box::new([]),
        }
    }

    /// Whether the key may name `model` (a model or a router).
    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == model))
    }

    /// Whether the key may be used from `addr`.
    pub fn allows_addr(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        self.allowed_cidrs.is_empty() || self.allowed_cidrs.iter().any(|n| n.contains(&addr))
    }
}

/// What the table knows of one key (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// Who the key belongs to and what it may do.
    pub grant: Arc<Grant>,
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

/// The live keys by public id (and their grants by key id).
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    by_public_id: HashMap<String, KeyEntry>,
    by_key_id: HashMap<Uuid, Arc<Grant>>,
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
    scopes: serde_json::Value,
    allowed_cidrs: Vec<String>,
}

impl Row {
    fn into_entry(self) -> (String, KeyEntry) {
        let models = self
            .scopes
            .get("models")
            .and_then(|m| m.as_array())
            .map(|m| {
                m.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect::<Box<[String]>>()
            });
        // The store accepts only valid networks; one that does not parse (an
        // edit by hand) counts as a network nothing is in, never as "any".
        let unparsable = || IpNet::from(IpAddr::from([255, 255, 255, 255]));
        let allowed_cidrs = self
            .allowed_cidrs
            .iter()
            .map(|c| c.parse().unwrap_or_else(|_| unparsable()))
            .collect();
        let grant = Grant {
            owner: KeyOwner {
                key_id: self.key_id,
                project_id: self.project_id,
                org_id: self.org_id,
            },
            models,
            allowed_cidrs,
        };
        let entry = KeyEntry {
            grant: Arc::new(grant),
            secret_hash: self.secret_hash,
            previous: self.previous_hash.zip(self.previous_until_ms),
            expires_at_ms: self.expires_at_ms,
        };
        (self.public_id, entry)
    }
}

/// The columns of a live key, and the condition that makes it live.
const LIVE_KEYS: &str = "SELECT k.public_id, k.id AS key_id, p.id AS project_id, o.id AS org_id, \
        k.secret_hash, k.previous_hash, \
        (extract(epoch FROM k.previous_valid_until) * 1000)::bigint AS previous_until_ms, \
        (extract(epoch FROM k.expires_at) * 1000)::bigint AS expires_at_ms, \
        k.scopes, k.allowed_cidrs \
    FROM api_keys k JOIN projects p ON p.id = k.project_id JOIN orgs o ON o.id = p.org_id \
    WHERE k.status = 'active' AND p.status = 'active' AND o.status = 'active'";

impl KeyTable {
    /// Every live key in the store: active, of an active project and org.
    pub async fn load(store: &Store) -> Result<Self, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(LIVE_KEYS).fetch_all(store.pool()).await?;
        let mut table = KeyTable::default();
        for row in rows {
            let (public_id, entry) = row.into_entry();
            table.apply(KeyChange::Upsert { public_id, entry });
        }
        Ok(table)
    }

    /// What the store says of the key with this public id now: its entry if
    /// it is live, else a removal.
    pub async fn load_one(store: &Store, public_id: &str) -> Result<KeyChange, StoreError> {
        let row: Option<Row> = sqlx::query_as(&format!("{LIVE_KEYS} AND k.public_id = $1"))
            .bind(public_id)
            .fetch_optional(store.pool())
            .await?;
        Ok(match row {
            Some(row) => {
                let (public_id, entry) = row.into_entry();
                KeyChange::Upsert { public_id, entry }
            }
            None => KeyChange::Remove {
                public_id: public_id.to_owned(),
            },
        })
    }

    /// The grant of the live key with id `key_id` (a batch runs under its
    /// key's grant after the request that made it is gone).
    pub fn grant_of(&self, key_id: Uuid) -> Option<Arc<Grant>> {
        self.by_key_id.get(&key_id).cloned()
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
                self.by_key_id
                    .insert(entry.grant.owner.key_id, entry.grant.clone());
                self.by_public_id.insert(public_id, entry);
            }
            KeyChange::Remove { public_id } => {
                if let Some(gone) = self.by_public_id.remove(&public_id) {
                    self.by_key_id.remove(&gone.grant.owner.key_id);
                }
            }
        }
    }

    /// Whose `key` is at `now_ms` and what it may do, or why it is refused.
    pub fn authenticate(
        &self,
        pepper: &Pepper,
        key: &str,
        now_ms: i64,
    ) -> Result<&Arc<Grant>, Refused> {
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
        Ok(&entry.grant)
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
                grant: Arc::new(Grant::unrestricted(who)),
                secret_hash: old.hash.to_vec(),
                previous: None,
                expires_at_ms: None,
            },
        });
        assert_eq!(
            t.authenticate(&p, &old.key, 0),
            Ok(&Arc::new(Grant::unrestricted(who)))
        );
        assert_eq!(t.authenticate(&p, &new.key, 0), Err(Refused::Unknown));
        // Rotated with a grace until t = 1,000.
        t.apply(KeyChange::Upsert {
            public_id: old.public_id.clone(),
            entry: KeyEntry {
                grant: Arc::new(Grant::unrestricted(who)),
                secret_hash: new.hash.to_vec(),
                previous: Some((old.hash.to_vec(), 1_000)),
                expires_at_ms: Some(5_000),
            },
        });
        assert_eq!(
            t.authenticate(&p, &old.key, 999),
            Ok(&Arc::new(Grant::unrestricted(who)))
        );
        assert_eq!(t.authenticate(&p, &old.key, 1_000), Err(Refused::Unknown));
        assert_eq!(
            t.authenticate(&p, &new.key, 4_999),
            Ok(&Arc::new(Grant::unrestricted(who)))
        );
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
        assert_eq!(t.grant_of(who.key_id), None);
    }

    #[test]
    fn a_grant_limits_models_and_client_networks() {
        let mut g = Grant::unrestricted(owner());
        assert!(g.allows_model("anything"));
        assert!(g.allows_addr("203.0.113.9".parse().unwrap()));
        g.models = Some(vec!["gpt-4o".to_owned(), "auto:code".to_owned()].into());
        g.allowed_cidrs = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ]
        .into();
        assert!(g.allows_model("gpt-4o") && g.allows_model("auto:code"));
        assert!(!g.allows_model("auto") && !g.allows_model("GPT-4O"));
        assert!(g.allows_addr("10.1.2.3".parse().unwrap()));
        // An IPv4 client on a dual-stack socket comes as a mapped IPv6 address.
        assert!(g.allows_addr("::ffff:10.1.2.3".parse().unwrap()));
        assert!(g.allows_addr("2001:db8::1".parse().unwrap()));
        assert!(!g.allows_addr("11.0.0.1".parse().unwrap()));
        assert!(!g.allows_addr("127.0.0.1".parse().unwrap()));
    }
}
