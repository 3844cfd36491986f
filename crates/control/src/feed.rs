//! Keeping every ingress's key table current: the store announces each key
//! change it commits on a core NATS subject ([`Notifier`]); every ingress
//! follows that subject ([`follow`]) and applies the change to its
//! [`LiveKeys`] at once.
//!
//! - A revocation carries its verdict: the key is dropped without asking the
//!   database, so it dies on every replica within one NATS hop.
//! - Any other change (a new key, a rotation) names the key; the follower
//!   reads that one key from the store and applies what it finds.
//! - A follower that (re)connects to NATS reloads the whole table, since it
//!   may have missed announcements while it was away, and so does every
//!   follower every `resync` period, which bounds the effect of an
//!   announcement lost with its publisher.
//!
//! Changes are applied by one task, in the order they arrive; a reload is
//! applied in the same sequence, so a change announced during a reload is
//! read again after it.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::key::Pepper;
use crate::keytable::{Grant, KeyChange, KeyTable, Refused};
use crate::store::{Store, StoreError};

/// One announcement on the key subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum KeyNotice {
    /// The key was created or changed: read it again.
    Changed {
        /// Its public id.
        public_id: String,
    },
    /// The key was revoked: drop it.
    Revoked {
        /// Its public id.
        public_id: String,
    },
    /// Many keys changed (an org or project disabled): reload every key.
    All,
}

/// Announces the store's committed key and credential changes.
#[derive(Debug, Clone)]
pub struct Notifier {
    client: async_nats::Client,
    subject: String,
    credentials_subject: Option<String>,
}

impl Notifier {
    /// Announces key changes on `subject` (`Subjects::key_notices`) over `client`.
    pub fn new(client: async_nats::Client, subject: String) -> Self {
        Notifier {
            client,
            subject,
            credentials_subject: None,
        }
    }

    /// The same, also announcing credential changes on `subject`
    /// (`Subjects::credential_notices`): every worker reloads its credentials.
    pub fn with_credentials(self, subject: String) -> Self {
        Notifier {
            credentials_subject: Some(subject),
            ..self
        }
    }

    /// Says that the credentials changed (they are reloaded whole).
    pub async fn announce_credentials(&self) {
        let Some(subject) = &self.credentials_subject else {
            return;
        };
        let sent = match self.client.publish(subject.clone(), "{}".into()).await {
            Ok(()) => self.client.flush().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = sent {
            tracing::warn!(%error, "Announcing a credential change failed; workers apply it at their next resync.");
        }
    }

    /// Publishes `notice` and waits until the server has it. A failure is
    /// logged, not returned: the change is committed, and followers pick it
    /// up at their next resync.
    pub async fn announce(&self, notice: &KeyNotice) {
        let Ok(body) = serde_json::to_vec(notice) else {
            return;
        };
        let sent = match self.client.publish(self.subject.clone(), body.into()).await {
            Ok(()) => self.client.flush().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = sent {
            tracing::warn!(%error, ?notice, "Announcing a key change failed; replicas apply it at their next resync.");
        }
    }
}

/// The key table an ingress authenticates from, kept current by [`follow`].
#[derive(Debug)]
pub struct LiveKeys {
    table: RwLock<KeyTable>,
    pepper: Pepper,
}

impl LiveKeys {
    /// A table to authenticate from with `pepper` (normally made by [`follow`]).
    pub fn new(table: KeyTable, pepper: Pepper) -> Self {
        LiveKeys {
            table: RwLock::new(table),
            pepper,
        }
    }

    /// What `key` may do at `now_ms`, or why it is refused: one map probe and
    /// one HMAC under a read lock.
    pub fn authenticate(&self, key: &str, now_ms: i64) -> Result<Arc<Grant>, Refused> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table.authenticate(&self.pepper, key, now_ms).cloned()
    }

    /// The grant of the live key with id `key_id`, if it is live.
    pub fn grant_of(&self, key_id: Uuid) -> Option<Arc<Grant>> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table.grant_of(key_id)
    }

    /// The price versions (reloaded with the whole table).
    pub fn prices(&self) -> Arc<crate::pricing::PriceBook> {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .prices()
    }

    /// The pipelines of the admin API, by model name (reloaded with the
    /// whole table).
    pub fn pipelines(&self) -> Arc<crate::pipelines::Pipelines> {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .pipelines()
    }

    /// How many live keys there are.
    pub fn len(&self) -> usize {
        self.table.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether there is no live key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn apply(&self, change: KeyChange) {
        self.table
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .apply(change);
    }

    fn replace(&self, table: KeyTable) {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = table;
    }
}

/// Subscribes to `subject`, loads every live key from `store`, and keeps the
/// table current in a task of its own, which ends when the table is dropped.
/// Fails if the first load fails (an ingress must not start without its keys).
pub async fn follow(
    store: Store,
    client: async_nats::Client,
    subject: String,
    resync: Duration,
) -> Result<Arc<LiveKeys>, StoreError> {
    // Subscribe before loading, so no change between the two is missed.
    let subscriber = client
        .subscribe(subject.clone())
        .await
        .map_err(|e| StoreError::Feed(e.to_string()))?;
    let table = KeyTable::load(&store).await?;
    tracing::info!(keys = table.len(), "Loaded the API key table.");
    let live = Arc::new(LiveKeys::new(table, store.pepper().clone()));
    let follower = Follower {
        store,
        client,
        live: Arc::downgrade(&live),
        resync,
    };
    tokio::spawn(follower.run(subscriber));
    Ok(live)
}

struct Follower {
    store: Store,
    client: async_nats::Client,
    live: Weak<LiveKeys>,
    resync: Duration,
}

/// How often the follower checks for a reconnect and retries what failed.
const TICK: Duration = Duration::from_secs(1);

impl Follower {
    async fn run(self, mut subscriber: async_nats::Subscriber) {
        let stats = self.client.statistics();
        let connects = || stats.connects.load(std::sync::atomic::Ordering::Relaxed);
        let mut seen_connects = connects();
        let mut since_reload = Duration::ZERO;
        // Keys whose re-read failed (the database away): read again each tick.
        let mut unread: Vec<String> = Vec::new();
        let mut reload_due = false;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let Some(live) = self.live.upgrade() else {
                return;
            };
            tokio::select! {
                msg = subscriber.next() => {
                    let Some(msg) = msg else { return };
                    match serde_json::from_slice::<KeyNotice>(&msg.payload) {
                        Ok(KeyNotice::Revoked { public_id }) => {
                            live.apply(KeyChange::Remove { public_id });
                        }
                        Ok(KeyNotice::Changed { public_id }) => {
                            if !self.reread(&live, &public_id).await {
                                unread.push(public_id);
                            }
                        }
                        Ok(KeyNotice::All) => reload_due = true,
                        Err(error) => {
                            tracing::warn!(%error, "A key notice that does not parse; reloading every key.");
                            reload_due = true;
                        }
                    }
                }
                _ = tick.tick() => {
                    since_reload += TICK;
                    let now = connects();
                    if now != seen_connects {
                        seen_connects = now;
                        reload_due = true;
                    }
                    if since_reload >= self.resync {
                        reload_due = true;
                    }
                    let retry = std::mem::take(&mut unread);
                    for public_id in retry {
                        if !self.reread(&live, &public_id).await {
                            unread.push(public_id);
                        }
                    }
                }
            }
            if reload_due {
                match KeyTable::load(&self.store).await {
                    Ok(table) => {
                        live.replace(table);
                        reload_due = false;
                        since_reload = Duration::ZERO;
                        unread.clear();
                    }
                    Err(error) => {
                        tracing::warn!(%error, "Reloading the API key table failed; retrying.");
                    }
                }
            }
        }
    }

    /// Reads one key again and applies what the store says; false if the
    /// store could not be read.
    async fn reread(&self, live: &LiveKeys, public_id: &str) -> bool {
        match KeyTable::load_one(&self.store, public_id).await {
            Ok(change) => {
                live.apply(change);
                true
            }
            Err(error) => {
                tracing::warn!(%error, public_id, "Reading a changed key failed; retrying.");
                false
            }
        }
    }
}
