use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sy_bus::{Bus, BusError};
use sy_protocol::{Cancel, CancelReason, Subjects};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Cancels remembered for requests not (yet) being worked on here: a cancel can
/// overtake its request, which may still wait in the stream.
const REMEMBER: Duration = Duration::from_secs(120);
const REMEMBER_MAX: usize = 100_000;

/// A request running here: its token, and why it was cancelled.
#[derive(Debug, Clone, Default)]
struct Running {
    token: CancellationToken,
    reason: Arc<OnceLock<CancelReason>>,
}

/// Requests in flight in this process, by id, and recent cancels.
#[derive(Clone, Debug, Default)]
pub struct CancelRegistry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    running: HashMap<Uuid, Running>,
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
                    // The reason decides the usage row's status; an unreadable
                    // one still cancels.
                    let reason = serde_json::from_slice::<Cancel>(&msg.payload)
                        .map_or(CancelReason::ClientDisconnected, |c| c.reason);
                    r.cancel(id, reason);
                }
            }
        });
        Ok(registry)
    }

    /// Marks `id` cancelled for `reason`: stops it if running here, remembers
    /// it otherwise.
    pub fn cancel(&self, id: Uuid, reason: CancelReason) {
        let mut inner = self.inner.lock().expect("cancel registry lock poisoned");
        if let Some(running) = inner.running.get(&id) {
            tracing::debug!(request_id = %id, ?reason, "Cancelling request.");
            let _ = running.reason.set(reason);
            running.token.cancel();
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
        let running = Running::default();
        inner.running.insert(id, running.clone());
        Some(RunningGuard {
            id,
            running,
            registry: self.clone(),
        })
    }
}

/// A request running here; untracked when dropped.
#[derive(Debug)]
pub struct RunningGuard {
    id: Uuid,
    running: Running,
    registry: CancelRegistry,
}

impl RunningGuard {
    /// Fires when the request is cancelled.
    pub fn token(&self) -> &CancellationToken {
        &self.running.token
    }

    /// Why it was cancelled, once it was.
    pub fn reason(&self) -> Option<CancelReason> {
        self.running.reason.get().copied()
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
        r.cancel(id, CancelReason::ClientDisconnected);
        assert!(r.begin(id).is_none());
        assert!(r.begin(Uuid::now_v7()).is_some());
    }

    #[test]
    fn cancel_while_running_fires_the_token() {
        let r = CancelRegistry::default();
        let id = Uuid::now_v7();
        let guard = r.begin(id).unwrap();
        assert!(!guard.token().is_cancelled());
        assert_eq!(guard.reason(), None);
        r.cancel(id, CancelReason::ReplyBroken);
        assert!(guard.token().is_cancelled());
        assert_eq!(guard.reason(), Some(CancelReason::ReplyBroken));
        // The first reason stays.
        r.cancel(id, CancelReason::ClientDisconnected);
        assert_eq!(guard.reason(), Some(CancelReason::ReplyBroken));
        drop(guard);
        assert!(r.inner.lock().unwrap().running.is_empty());
    }
}
