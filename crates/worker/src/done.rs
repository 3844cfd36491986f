//! Completion marks: a request message that a worker answered is never run again.
//!
//! JetStream delivers at least once: an ack lost in a NATS reconnect, or a
//! worker that dies between answering and acking, brings the message back after
//! `ack_wait`. So the worker writes a mark keyed by the message's id (request
//! id and envelope attempt, its `Nats-Msg-Id`) into the `<NS>_DONE` bucket:
//!
//! - when an attempt answered the client (or the client is gone), the mark holds
//!   that attempt's usage event and is written *before* the event is published;
//! - before the ack, every other ending (an error sent, a fallback republished)
//!   leaves an empty mark, unless one exists.
//!
//! A redelivered message (delivery count above one) whose mark exists is acked
//! without a provider call or a reply; the usage event in the mark is published
//! again (its id dedups it in JetStream and ClickHouse), so a worker that died
//! between answering and publishing loses no usage either. First deliveries
//! never look, so a request costs one KV write, made after the client has its
//! final frame.

use async_nats::jetstream::kv::{CreateErrorKind, Store};
use sy_bus::Bus;
use sy_protocol::UsageEvent;

/// The marks, or nothing when NATS would not create the bucket (then a
/// redelivery runs again, as before).
pub(crate) struct DoneMarks(Option<Store>);

/// What a redelivered message's mark says.
#[derive(Debug)]
pub(crate) enum Mark {
    /// No mark: the message was never finished.
    Absent,
    /// Finished; the answered attempt's usage event, when the mark holds one.
    Done(Option<Box<UsageEvent>>),
}

impl DoneMarks {
    /// Opens (creates) the bucket.
    pub(crate) async fn open(bus: &Bus) -> DoneMarks {
        match bus.done_store().await {
            Ok(s) => DoneMarks(Some(s)),
            Err(e) => {
                tracing::warn!(error = %e, "No completion marks: a redelivered request may run twice.");
                DoneMarks(None)
            }
        }
    }

    /// The mark of message `key`. An unreadable bucket answers `Absent`:
    /// running twice beats never answering.
    pub(crate) async fn get(&self, key: &str) -> Mark {
        let Some(store) = &self.0 else {
            return Mark::Absent;
        };
        match store.get(key).await {
            Ok(Some(v)) => Mark::Done(serde_json::from_slice(&v).ok().map(Box::new)),
            Ok(None) => Mark::Absent,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read the completion mark; running the request.");
                Mark::Absent
            }
        }
    }

    /// Marks message `key` answered by the attempt whose usage event is
    /// `value` (its JSON); waits until JetStream stored the mark.
    pub(crate) async fn answered(&self, key: &str, value: bytes::Bytes) {
        let Some(store) = &self.0 else { return };
        let mut wait = MARK_RETRY_FIRST;
        loop {
            match store.put(key, value.clone()).await {
                Ok(_) => return,
                // A bucket whose leader is being elected (a cluster node
                // died) answers again within seconds: a mark is worth the wait.
                Err(e) if wait <= MARK_RETRY_LAST => {
                    tracing::debug!(error = %e, ?wait, "Writing the completion mark failed; trying again.");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Writing the completion mark failed; a redelivery would run again.");
                    return;
                }
            }
        }
    }

    /// Marks message `key` finished unless it is marked already.
    pub(crate) async fn finished(&self, key: &str) {
        let Some(store) = &self.0 else { return };
        let mut wait = MARK_RETRY_FIRST;
        loop {
            match store.create(key, bytes::Bytes::new()).await {
                Ok(_) => return,
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => return,
                Err(e) if wait <= MARK_RETRY_LAST => {
                    tracing::debug!(error = %e, ?wait, "Writing the completion mark failed; trying again.");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Writing the completion mark failed; a redelivery would run again.");
                    return;
                }
            }
        }
    }
}

/// A completion mark that could not be written is tried again after 100 ms,
/// then twice as long each time up to 1.6 s (3.1 s in all).
const MARK_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const MARK_RETRY_LAST: std::time::Duration = std::time::Duration::from_millis(1600);
