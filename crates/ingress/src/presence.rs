//! How many ingress replicas are alive: each one says so on
//! `<ns>.ingress.alive` every second (core NATS) and counts the replicas it
//! heard from in the last three seconds, itself included. Rate limits divide
//! each limit by this count while Redis is away (`ratelimit`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sy_bus::Bus;

/// How often a replica says it is alive.
const EVERY: Duration = Duration::from_secs(1);
/// How long a replica counts as alive after it last said so.
const ALIVE_FOR: Duration = Duration::from_secs(3);

/// The number of live ingress replicas, kept current in the background.
#[derive(Debug)]
pub(crate) struct Replicas {
    count: AtomicU32,
}

impl Replicas {
    /// Live replicas now, at least 1 (this one).
    pub(crate) fn count(&self) -> u32 {
        self.count.load(Ordering::Relaxed).max(1)
    }
}

/// Starts saying that `ingress_id` is alive and counting the others; the
/// tasks end when the returned value is dropped.
pub(crate) async fn start(bus: &Bus, ingress_id: &str) -> Arc<Replicas> {
    let replicas = Arc::new(Replicas {
        count: AtomicU32::new(1),
    });
    let subject = bus.subjects().ingress_alive();
    let client = bus.client().clone();
    let weak: Weak<Replicas> = Arc::downgrade(&replicas);
    match client.subscribe(subject.clone()).await {
        Ok(mut sub) => {
            let weak = weak.clone();
            tokio::spawn(async move {
                let mut seen: HashMap<Vec<u8>, Instant> = HashMap::new();
                let mut tick = tokio::time::interval(EVERY);
                loop {
                    tokio::select! {
                        msg = sub.next() => {
                            let Some(msg) = msg else { return };
                            seen.insert(msg.payload.to_vec(), Instant::now());
                        }
                        _ = tick.tick() => {}
                    }
                    let Some(r) = weak.upgrade() else { return };
                    seen.retain(|_, at| at.elapsed() < ALIVE_FOR);
                    r.count.store(
                        u32::try_from(seen.len()).unwrap_or(u32::MAX),
                        Ordering::Relaxed,
                    );
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "Cannot count ingress replicas; assuming this one alone.")
        }
    }
    let id = bytes::Bytes::from(ingress_id.to_owned());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            if weak.upgrade().is_none() {
                return;
            }
            if let Err(e) = client.publish(subject.clone(), id.clone()).await {
                tracing::debug!(error = %e, "Saying this ingress is alive failed.");
            }
        }
    });
    replicas
}
