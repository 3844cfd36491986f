use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use sy_protocol::{Cancel, CancelReason, Subjects};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::BusError;

/// Where one request's frames go, and whether it was cut off.
#[derive(Debug)]
struct Route {
    tx: mpsc::Sender<Bytes>,
    cut: Arc<AtomicBool>,
}

type Routes = Arc<Mutex<HashMap<Uuid, Route>>>;

/// The ingress's one subscription for replies, demultiplexed by request id.
///
/// Frames arrive on `<ns>.reply.<ingress>.<request>`; each goes, as raw bytes, to
/// the [`ReplyReceiver`] registered for that request. Frames for requests nobody
/// waits for (finished, cancelled, or from before a restart) are dropped. A receiver
/// whose buffer is full (a client reading too slowly) is cut off at the first frame
/// that does not fit: the request is cancelled on the bus at once (reason
/// `reply_broken`, so the worker drops the upstream call and its usage row says
/// `cut_off`), and the receiver's next `recv` sees the end of its frames, without
/// the frames still buffered.
#[derive(Clone, Debug)]
pub struct ReplyRouter {
    routes: Routes,
}

impl ReplyRouter {
    /// Subscribes to `subjects.reply_filter(ingress_id)` and starts routing.
    /// The routing task ends when the connection is closed for good.
    pub async fn start(
        client: &async_nats::Client,
        subjects: &Subjects,
        ingress_id: &str,
    ) -> Result<ReplyRouter, BusError> {
        let mut sub = client
            .subscribe(subjects.reply_filter(ingress_id))
            .await
            .map_err(|e| BusError::Setup(format!("reply subscription: {e}")))?;
        let routes: Routes = Arc::default();
        let task_routes = routes.clone();
        let client = client.clone();
        let subjects = subjects.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(id) = Subjects::request_id_of(&msg.subject) else {
                    continue;
                };
                let full = {
                    let mut map = task_routes.lock().expect("reply routes lock poisoned");
                    let Some(route) = map.get(&id) else {
                        continue;
                    };
                    match route.tx.try_send(msg.payload) {
                        Ok(()) => false,
                        Err(e) => {
                            // Full (too slow) or closed: either way, stop feeding it.
                            let full = matches!(e, mpsc::error::TrySendError::Full(_));
                            if full {
                                route.cut.store(true, Ordering::Release);
                            }
                            map.remove(&id);
                            full
                        }
                    }
                };
                if full {
                    tracing::debug!(request_id = %id, "Reply buffer full: the client reads too slowly; cancelling.");
                    let cancel = Cancel {
                        request_id: id,
                        reason: CancelReason::ReplyBroken,
                    };
                    if let Err(e) = crate::publish_cancel(&client, &subjects, &cancel).await {
                        tracing::warn!(error = %e, "Publishing a cancel failed.");
                    }
                }
            }
            tracing::info!("Reply subscription closed.");
        });
        Ok(ReplyRouter { routes })
    }

    /// Starts waiting for `request_id`'s frames, buffering at most `capacity`.
    /// Register before publishing the request, so no frame can be missed.
    pub fn register(&self, request_id: Uuid, capacity: usize) -> ReplyReceiver {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let cut = Arc::new(AtomicBool::new(false));
        self.routes
            .lock()
            .expect("reply routes lock poisoned")
            .insert(
                request_id,
                Route {
                    tx,
                    cut: cut.clone(),
                },
            );
        ReplyReceiver {
            request_id,
            rx,
            cut,
            routes: self.routes.clone(),
        }
    }

    /// How many requests are waiting for replies.
    pub fn waiting(&self) -> usize {
        self.routes
            .lock()
            .expect("reply routes lock poisoned")
            .len()
    }
}

/// One request's frames, in arrival order. Dropping it stops the routing.
#[derive(Debug)]
pub struct ReplyReceiver {
    request_id: Uuid,
    rx: mpsc::Receiver<Bytes>,
    /// Set by the router when a frame did not fit.
    cut: Arc<AtomicBool>,
    routes: Routes,
}

impl ReplyReceiver {
    /// The next frame's bytes; `None` once the router cut this request off
    /// (at once, not after the frames still buffered). Cancel safe.
    pub async fn recv(&mut self) -> Option<Bytes> {
        if self.cut.load(Ordering::Acquire) {
            return None;
        }
        self.rx.recv().await
    }

    /// True when the router cut this request off (a frame did not fit).
    pub fn was_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// The request this receiver waits for.
    pub fn request_id(&self) -> Uuid {
        self.request_id
    }
}

impl Drop for ReplyReceiver {
    fn drop(&mut self) {
        if let Ok(mut map) = self.routes.lock() {
            map.remove(&self.request_id);
        }
    }
}
