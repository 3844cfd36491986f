use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use sy_protocol::Subjects;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::BusError;

type Routes = Arc<Mutex<HashMap<Uuid, mpsc::Sender<Bytes>>>>;

/// The ingress's one subscription for replies, demultiplexed by request id.
///
/// Frames arrive on `<ns>.reply.<ingress>.<request>`; each goes, as raw bytes, to
/// the [`ReplyReceiver`] registered for that request. Frames for requests nobody
/// waits for (finished, cancelled, or from before a restart) are dropped. A receiver
/// whose buffer is full (a client reading too slowly) is cut off: its channel closes,
/// and the request sees the end of its frames without a final frame.
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
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(id) = Subjects::request_id_of(&msg.subject) else {
                    continue;
                };
                let mut map = task_routes.lock().expect("reply routes lock poisoned");
                if let Some(tx) = map.get(&id)
                    && tx.try_send(msg.payload).is_err()
                {
                    // Full (too slow) or closed: either way, stop feeding it.
                    map.remove(&id);
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
        self.routes
            .lock()
            .expect("reply routes lock poisoned")
            .insert(request_id, tx);
        ReplyReceiver {
            request_id,
            rx,
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
    routes: Routes,
}

impl ReplyReceiver {
    /// The next frame's bytes; `None` once the router cut this request off.
    /// Cancel safe.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
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
