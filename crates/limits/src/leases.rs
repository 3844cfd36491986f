//! One process's concurrency leases in Redis, kept together so that they
//! cost Redis as little as possible: every live lease is renewed by one
//! pipeline every third of the lease (not a timer per request), and ended
//! leases are released in batches by one task (one `ZREM` per lease set with
//! every request id that ended since the last batch), off the request path.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::Limiter;

/// The live and ended leases of one process.
#[derive(Debug)]
pub struct LeaseBook {
    lease: Duration,
    /// Lease set → request ids holding a lease there.
    live: Mutex<HashMap<String, HashSet<String>>>,
    /// Ended leases not released yet: (lease set, request id).
    ended: Mutex<Vec<(String, String)>>,
    wake: Notify,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl LeaseBook {
    /// A book whose leases last `lease` unless renewed, renewing and
    /// releasing through `limiter` until the book is dropped.
    pub fn start(limiter: Limiter, lease: Duration) -> Arc<LeaseBook> {
        let book = Arc::new(LeaseBook {
            lease,
            live: Mutex::new(HashMap::new()),
            ended: Mutex::new(Vec::new()),
            wake: Notify::new(),
        });
        let weak = Arc::downgrade(&book);
        tokio::spawn(release_ended(weak.clone(), limiter.clone()));
        tokio::spawn(renew_live(weak, limiter, lease));
        book
    }

    /// How long a lease lasts unless renewed.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Records that `request_id` holds a lease in each of `keys` (admitted).
    pub fn hold(&self, request_id: &str, keys: &[String]) {
        let mut live = locked(&self.live);
        for k in keys {
            live.entry(k.clone())
                .or_default()
                .insert(request_id.to_owned());
        }
    }

    /// `request_id` ended: its leases are released with the next batch.
    pub fn end(&self, request_id: &str, keys: &[String]) {
        {
            let mut live = locked(&self.live);
            for k in keys {
                if let Some(ids) = live.get_mut(k) {
                    ids.remove(request_id);
                    if ids.is_empty() {
                        live.remove(k);
                    }
                }
            }
        }
        locked(&self.ended).extend(keys.iter().map(|k| (k.clone(), request_id.to_owned())));
        self.wake.notify_one();
    }
}

/// Releases ended leases in batches, as they come.
async fn release_ended(book: Weak<LeaseBook>, limiter: Limiter) {
    loop {
        let Some(b) = book.upgrade() else { return };
        let batch = std::mem::take(&mut *locked(&b.ended));
        if batch.is_empty() {
            // Wakes on the next ended lease (or checks every second whether
            // the book is gone).
            let _ = tokio::time::timeout(Duration::from_secs(1), b.wake.notified()).await;
            continue;
        }
        drop(b);
        let mut by_key: HashMap<&str, Vec<&str>> = HashMap::new();
        for (k, id) in &batch {
            by_key.entry(k).or_default().push(id);
        }
        if let Err(e) = limiter.release_many(&by_key).await {
            tracing::debug!(error = %e, leases = batch.len(), "Releasing leases failed; they expire by themselves.");
        }
    }
}

/// Renews every live lease every third of the lease.
async fn renew_live(book: Weak<LeaseBook>, limiter: Limiter, lease: Duration) {
    loop {
        tokio::time::sleep(lease / 3).await;
        let live = match book.upgrade() {
            Some(b) => locked(&b.live).clone(),
            None => return,
        };
        let by_key: HashMap<&str, Vec<&str>> = live
            .iter()
            .map(|(k, ids)| (k.as_str(), ids.iter().map(String::as_str).collect()))
            .collect();
        if let Err(e) = limiter.renew_many(&by_key, lease.as_millis() as u64).await {
            tracing::debug!(error = %e, "Renewing leases failed; renewed at the next round.");
        }
    }
}
