//! Usage events stored by group commit: one task per worker process takes
//! the events every request hands it and stores them in JetStream, all that
//! waited while the previous store was in flight in one message
//! (`Switchyard-Usage-Rows`). Alone, an event goes at once, as its own
//! message deduplicated by its event id; under load, one store, one delivery
//! to each consumer and one ack stand for many requests. Each request still
//! waits until its event is stored before it acks its request message, so
//! every usage event is in JetStream before its request is acked. A message
//! NATS does not take is sent again as it was (same events, same
//! `Nats-Msg-Id`: `rows-<first event id>-<n>-<hash of every id>`), so
//! JetStream drops a repeat whose first try was stored but whose ack was
//! lost, for up to a minute, while the waiting requests stay in progress. An
//! event stored again by a worker finishing a redelivered request goes alone,
//! marked `Switchyard-Usage-Again`, and the consumers look for it before they
//! count it (ClickHouse by event id; the ledger and limits' settlement keep
//! one of each event id anyway).

use std::time::Duration;

use bytes::Bytes;
use sy_bus::{Bus, BusError};
use sy_protocol::UsageEvent;
use tokio::sync::{mpsc, oneshot};

/// At most this many events in one message.
const MAX_ROWS: usize = 256;
/// At most about this many bytes in one message (JetStream's default cap is
/// 1 MiB).
const MAX_BYTES: usize = 256 * 1024;

/// One event on its way: its JSON, its id, whether it is billed 0, and who
/// waits for the store.
struct Pending {
    json: Bytes,
    event_id: String,
    free: bool,
    stored: oneshot::Sender<Result<(), String>>,
}

/// The process's usage sink (see the module's docs).
#[derive(Clone)]
pub(crate) struct UsageSink(mpsc::UnboundedSender<Pending>);

impl UsageSink {
    /// Starts the task that stores what the sink is given on `bus`.
    pub(crate) fn start(bus: Bus) -> UsageSink {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(bus, rx));
        UsageSink(tx)
    }

    /// Stores `event`, serialised already as `json` ([`encode`]); returns
    /// once JetStream has it (or the store failed).
    pub(crate) async fn store(&self, event: &UsageEvent, json: Bytes) -> Result<(), String> {
        let (stored, done) = oneshot::channel();
        self.0
            .send(Pending {
                json,
                event_id: event.event_id.clone(),
                free: event.billed_nanos == Some(0),
                stored,
            })
            .map_err(|_| "the usage sink has stopped".to_owned())?;
        done.await
            .unwrap_or_else(|_| Err("the usage sink has stopped".to_owned()))
    }
}

/// A usage event as the sink stores it (and the completion mark holds it).
pub(crate) fn encode(event: &UsageEvent) -> serde_json::Result<Bytes> {
    serde_json::to_vec(event).map(Bytes::from)
}

async fn run(bus: Bus, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut group: Vec<Pending> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut bytes = first.json.len();
        group.push(first);
        while group.len() < MAX_ROWS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.json.len() + 1;
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let result = store_retrying(&bus, &group).await;
        for p in group.drain(..) {
            let _ = p.stored.send(result.clone());
        }
    }
}

/// Stores `group`, the same message again while NATS will not take it (so
/// JetStream drops a repeat whose first try was stored but not acked), for
/// at most `PUBLISH_FOR`.
async fn store_retrying(bus: &Bus, group: &[Pending]) -> Result<(), String> {
    let message = Message::of(group);
    let until = tokio::time::Instant::now() + crate::usage::PUBLISH_FOR;
    let mut backoff = Duration::from_millis(50);
    loop {
        match message.store(bus).await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() + backoff < until => {
                tracing::warn!(error = %e, events = group.len(), "Storing usage events failed, retrying.");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// One usage message: an event alone, or several as rows.
enum Message {
    Alone {
        event_id: String,
        json: Bytes,
    },
    Rows {
        id: String,
        rows: usize,
        free: bool,
        payload: Bytes,
    },
}

impl Message {
    fn of(group: &[Pending]) -> Message {
        if let [one] = group {
            return Message::Alone {
                event_id: one.event_id.clone(),
                json: one.json.clone(),
            };
        }
        let mut payload = Vec::with_capacity(group.iter().map(|p| p.json.len() + 1).sum::<usize>());
        for p in group {
            payload.extend_from_slice(&p.json);
            payload.push(b'\n');
        }
        Message::Rows {
            id: group_id(group),
            rows: group.len(),
            free: group.iter().all(|p| p.free),
            payload: Bytes::from(payload),
        }
    }

    async fn store(&self, bus: &Bus) -> Result<(), BusError> {
        match self {
            Message::Alone { event_id, json } => {
                bus.publish_usage_json(event_id, json.clone()).await
            }
            Message::Rows {
                id,
                rows,
                free,
                payload,
            } => {
                bus.publish_usage_payload(id, *rows, *free, payload.clone())
                    .await
            }
        }
    }
}

/// A group's `Nats-Msg-Id`: its first event's id, its size and a hash of
/// every member's id, so that only the same group is deduplicated as a repeat.
fn group_id(group: &[Pending]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in group {
        p.event_id.hash(&mut h);
    }
    format!(
        "rows-{}-{}-{:016x}",
        group.first().map_or("", |p| p.event_id.as_str()),
        group.len(),
        h.finish()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;

    fn event(billed: i64) -> UsageEvent {
        serde_json::from_value(sy_test_support::usage_event_json(billed)).expect("an event")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_that_wait_together_are_stored_in_one_message_each_once() {
        let (bus, client) = crate::test_bus().await;
        bus.ensure_usage_stream(Duration::from_secs(600))
            .await
            .expect("usage stream");
        let sink = UsageSink::start(bus.clone());
        // Alone: its own message, no rows header.
        let alone = event(5);
        sink.store(&alone, encode(&alone).expect("json"))
            .await
            .expect("stored");
        // 200 at once, half of them free: they wait for each other's store.
        let many: Vec<UsageEvent> = (0..200).map(|i| event(i % 2)).collect();
        let stores = many.iter().map(|e| sink.store(e, encode(e).expect("json")));
        for r in futures::future::join_all(stores).await {
            r.expect("stored");
        }
        let js = async_nats::jetstream::new(client);
        let stream = js
            .get_stream(bus.subjects().usage_stream())
            .await
            .expect("stream");
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
            .await
            .expect("consumer");
        let mut messages = consumer
            .fetch()
            .max_messages(300)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .expect("fetch");
        let mut seen = Vec::new();
        let mut count = 0;
        while let Some(Ok(m)) = messages.next().await {
            count += 1;
            let headers = m.headers.as_ref();
            let rows = headers
                .and_then(|h| h.get(sy_protocol::header::USAGE_ROWS))
                .map(|v| v.as_str().parse::<usize>().expect("a count"));
            let lines: Vec<&[u8]> =
                sy_protocol::legacy::usage_lines(&m.payload, rows.is_some()).collect();
            if let Some(n) = rows {
                assert_eq!(lines.len(), n, "the header counts the rows");
                let free = headers.and_then(|h| h.get(sy_protocol::header::USAGE_FREE));
                let read: Vec<UsageEvent> = lines
                    .iter()
                    .map(|l| serde_json::from_slice(l).expect("an event"))
                    .collect();
                assert_eq!(
                    free.is_some(),
                    read.iter().all(|e| e.billed_nanos == Some(0)),
                    "free only when every row is"
                );
            }
            for l in lines {
                let e: UsageEvent = serde_json::from_slice(l).expect("an event");
                seen.push(e.event_id);
            }
        }
        let mut want: Vec<String> = std::iter::once(&alone)
            .chain(&many)
            .map(|e| e.event_id.clone())
            .collect();
        want.sort();
        seen.sort();
        assert_eq!(seen, want, "every event stored, each once");
        assert!(
            count < 201,
            "events that waited together shared messages: {count} messages for 201 events"
        );
    }
}
