use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sy_bus::{Bus, BusError};
use sy_protocol::Subjects;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Cancels remembered for requests not (yet) being worked on here: a cancel can
/// overtake its request, which may still wait in the stream.
const REMEMBER: Duration = Duration::from_secs(120);
const REMEMBER_MAX: usize = 100_000;

/// Requests in flight in this process, by id, and recent cancels.
#[derive(Clone, Debug, Default)]
pub struct CancelRegistry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    running: HashMap<Uuid, CancellationToken>,
    recent: HashSet<Uuid>,
    order: VecDeque<(Instant, Uuid)>,
}

impl CancelRegistry {
    /// Subscribes to every cancel of the namespace and starts applying them.
    pub async fn start(bus: &Bus) -> Result<CancelRegistry, BusError> {
        let mut sub = bus
            .client()
            .subscribe(bus.subjects().cancel_filter())
            .await
            .map_err(|e| BusError::Setup(format!("cancel subscription: {e}")))?;
        let registry = CancelRegistry::default();
        let r = registry.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if let Some(id) = Subjects::request_id_of(&msg.subject) {
                    r.cancel(id);
                }
            }
        });
        Ok(registry)
    }

    /// Marks `id` cancelled: stops it if running here, remembers it otherwise.
    pub fn cancel(&self, id: Uuid) {
        let mut inner = self.inner.lock().expect("cancel registry lock poisoned");
        if let Some(token) = inner.running.get(&id) {
            tracing::debug!(request_id = %id, "Cancelling request.");
            token.cancel();
            return;
        }
        let now = Instant::now();
        while let Some(&(t, old)) = inner.order.front() {
            if now.duration_since(t) < REMEMBER && inner.order.len() < REMEMBER_MAX {
                break;
            }
            inner.order.pop_front();
            inner.recent.remove(&old);
        }
        if inner.recent.insert(id) {
            inner.order.push_back((now, id));
        }
    }

    /// Starts tracking `id`; `None` if it was already cancelled.
    pub fn begin(&self, id: Uuid) -> Option<RunningGuard> {
        let mut inner = self.inner.lock().expect("cancel registry lock poisoned");
        if inner.recent.contains(&id) {
            return None;
        }
        let token = CancellationToken::new();
        inner.running.insert(id, token.clone());
        Some(RunningGuard {
            id,
            token,
            registry: self.clone(),
        })
    }
}

/// A request running here; untracked when dropped.
#[derive(Debug)]
pub struct RunningGuard {
    id: Uuid,
    token: CancellationToken,
    registry: CancelRegistry,
}

impl RunningGuard {
    /// Fires when the request is cancelled.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.registry.inner.lock() {
            inner.running.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_before_begin_is_remembered() {
        let r = CancelRegistry::default();
        let id = Uuid::now_v7();
        r.cancel(id);
        assert!(r.begin(id).is_none());
        assert!(r.begin(Uuid::now_v7()).is_some());
    }

    #[test]
    fn cancel_while_running_fires_the_token() {
        let r = CancelRegistry::default();
        let id = Uuid::now_v7();
        let guard = r.begin(id).unwrap();
        assert!(!guard.token().is_cancelled());
        r.cancel(id);
        assert!(guard.token().is_cancelled());
        drop(guard);
        assert!(r.inner.lock().unwrap().running.is_empty());
    }
}
