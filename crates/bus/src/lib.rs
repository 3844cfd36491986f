//! The NATS side of Switchyard: one connection per process, JetStream streams and
//! consumers created idempotently, typed publishes, and the reply demultiplexer.
//!
//! [`Bus`] wraps one `async_nats::Client` and its JetStream context. It creates the
//! request stream (`<NS>_REQ`: work-queue retention, file storage, `Nats-Msg-Id`
//! dedup) and each provider's durable pull consumer (`worker-<provider>`, whose
//! `max_ack_pending` is the cluster-wide concurrency cap), publishes
//! [`RequestEnvelope`]s and waits for JetStream's ack, and publishes reply frames
//! and cancels on core NATS. [`ReplyRouter`] is the ingress's single wildcard
//! subscription on `<ns>.reply.<ingress>.*`, routing each frame's raw bytes to the
//! request waiting for it. Messages are JSON (see `sy-protocol` and `schemas/`).

mod batch;
mod blobs;
mod error;
mod reply;

pub use batch::JOB_ACK_WAIT;
pub use blobs::{BLOB_MAX_AGE, get_blob, put_blob};
pub use error::BusError;
pub use reply::{ReplyReceiver, ReplyRouter};

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{Client, ConnectOptions, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use sy_config::NatsConfig;
use sy_protocol::{
    Cancel, Observation, ReplyFrame, RequestEnvelope, Subjects, TargetOverride, UsageEvent,
};

/// How long JetStream remembers a `Nats-Msg-Id` to drop a duplicate publish.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// One NATS connection and what Switchyard does with it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Bus {
    client: Client,
    js: jetstream::Context,
    /// For setup (streams, buckets, consumers): a longer timeout than a
    /// publish's, since a replicated stream's creation waits for its peers.
    admin: jetstream::Context,
    subjects: Subjects,
    config: NatsConfig,
}

/// How long a setup call (a stream, a bucket, a consumer) may wait for
/// JetStream's answer.
const SETUP_TIMEOUT: Duration = Duration::from_secs(3);

/// How long setup keeps trying while JetStream is not ready (a cluster
/// electing its leaders, a replicated stream finding its peers).
const SETUP_PATIENCE: Duration = Duration::from_secs(60);

/// Runs a setup call, again with backoff while JetStream answers that it is
/// not ready (a time-out, no leader yet, too few peers up) for at most
/// [`SETUP_PATIENCE`]; any other error is final at once.
async fn set_up<T, E, F, Fut>(what: &str, mut call: F) -> Result<T, BusError>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let until = tokio::time::Instant::now() + SETUP_PATIENCE;
    let mut wait = Duration::from_millis(200);
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let text = e.to_string();
                let transient = is_transient(&text);
                if !transient || tokio::time::Instant::now() + wait >= until {
                    return Err(BusError::Setup(format!("{what}: {text}")));
                }
                tracing::warn!(what, error = %text, "JetStream is not ready; trying again.");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Whether a JetStream setup error says "not ready yet" rather than "no":
/// a time-out, JetStream not (yet) answering on this server, a cluster
/// without a leader or without enough peers up, or a stream just made that
/// the server does not list yet. async-nats gives these as text only across
/// its error types; a storage limit ("insufficient resources") is final.
fn is_transient(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    [
        "timed out",
        "jetstream unavailable",
        "temporarily unavailable",
        "no suitable peers",
        "no responders",
        "resource does not exist",
    ]
    .iter()
    .any(|t| text.contains(t))
}

/// The servers of a `[nats] url`: one URL, or several separated by commas
/// (the seeds of a cluster; the client learns the others from them and
/// reconnects to any).
fn servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, BusError> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse().map_err(|e: std::io::Error| BusError::BadUrl {
                url: u.to_owned(),
                reason: e.to_string(),
            })
        })
        .collect()
}

impl Bus {
    /// Connects to `config.url` (one server or a comma-separated list). The first connect must succeed; later losses are
    /// retried forever in the background (requests meanwhile fail fast with
    /// [`BusError::Unavailable`]) and subscriptions come back on their own.
    pub async fn connect(config: &NatsConfig, name: &str) -> Result<Bus, BusError> {
        let client = ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                // Quick first retries so a restarted server is back in use at once,
                // capped so a long outage does not hammer it.
                Duration::from_millis((50u64 << attempts.min(5)).min(2_000))
            })
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("Connected to NATS."),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("Lost the NATS connection, reconnecting.")
                    }
                    other => tracing::debug!(event = %other, "NATS event."),
                }
            })
            .connect(servers(&config.url)?)
            .await
            .map_err(|source| BusError::Connect {
                url: config.url.clone(),
                source: Box::new(source),
            })?;
        Ok(Bus::from_client(client, config))
    }

    /// Wraps an existing connection.
    pub fn from_client(client: Client, config: &NatsConfig) -> Bus {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.publish_timeout);
        let mut admin = jetstream::new(client.clone());
        admin.set_timeout(SETUP_TIMEOUT.max(config.publish_timeout));
        Bus {
            client,
            js,
            admin,
            subjects: Subjects::new(&config.namespace),
            config: config.clone(),
        }
    }

    /// The underlying connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Subject and stream names for this namespace.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// True while the connection is up.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Creates the request stream, or updates it to this configuration.
    pub async fn ensure_request_stream(&self) -> Result<(), BusError> {
        self.ensure_stream(
            self.subjects.request_stream(),
            self.subjects.request_all(),
            stream::RetentionPolicy::WorkQueue,
            self.config.request_max_age,
            DUPLICATE_WINDOW,
            "Switchyard requests waiting for a worker",
        )
        .await
    }

    /// Creates the usage stream (limits retention, `max_age`, file storage), or
    /// updates it to this configuration. Event ids dedup within the window.
    pub async fn ensure_usage_stream(&self, max_age: Duration) -> Result<(), BusError> {
        self.ensure_stream(
            self.subjects.usage_stream(),
            self.subjects.usage(),
            stream::RetentionPolicy::Limits,
            max_age,
            DUPLICATE_WINDOW,
            "Switchyard usage events, one per attempt",
        )
        .await
    }

    /// The KV bucket of `Idempotency-Key`s; entries expire after `window`.
    pub async fn idempotency_store(
        &self,
        window: Duration,
    ) -> Result<jetstream::kv::Store, BusError> {
        self.ensure_kv(
            self.subjects.idempotency_bucket(),
            "Switchyard Idempotency-Keys: running marks and first results",
            window,
        )
        .await
    }

    /// The KV bucket of pipeline runs; each is kept for `max_age`.
    pub async fn pipeline_runs_store(
        &self,
        max_age: Duration,
    ) -> Result<jetstream::kv::Store, BusError> {
        self.ensure_kv(
            self.subjects.pipeline_runs_bucket(),
            "Switchyard pipeline runs: each step's request, model and output",
            max_age,
        )
        .await
    }

    /// The KV bucket of completion marks (the worker's `done` module). Marks
    /// live as long as a request message can: the request stream's `max_age`.
    pub async fn done_store(&self) -> Result<jetstream::kv::Store, BusError> {
        self.ensure_kv(
            self.subjects.done_bucket(),
            "Switchyard completion marks: request messages a worker finished",
            self.config.request_max_age,
        )
        .await
    }

    /// The KV bucket of operators' target overrides.
    pub async fn target_overrides(&self) -> Result<jetstream::kv::Store, BusError> {
        // No max age: an override stands until an operator changes it.
        self.ensure_kv(
            self.subjects.targets_bucket(),
            "Switchyard target overrides (operators forcing a target off or on)",
            Duration::ZERO,
        )
        .await
    }

    /// A file-stored KV bucket keeping one value per key, created or updated;
    /// entries expire after `max_age` (never when zero).
    pub(crate) async fn ensure_kv(
        &self,
        bucket: String,
        description: &str,
        max_age: Duration,
    ) -> Result<jetstream::kv::Store, BusError> {
        let config = jetstream::kv::Config {
            bucket: bucket.clone(),
            description: description.to_owned(),
            history: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: self.config.replicas,
            ..Default::default()
        };
        set_up(&format!("bucket {bucket}"), || {
            self.admin.create_or_update_key_value(config.clone())
        })
        .await
    }

    /// Stores a target override (its key is checked like a subject).
    pub async fn put_override(&self, o: &TargetOverride) -> Result<(), BusError> {
        let key = TargetOverride::key(&o.provider, &o.model);
        BusError::check_subject(&key)?;
        let store = self.target_overrides().await?;
        store
            .put(key, encode(o)?)
            .await
            .map(|_| ())
            .map_err(|e| BusError::Publish(e.to_string()))
    }

    /// Calls `apply` with every target override now in force and every later
    /// one, for as long as `apply` returns true; follows NATS restarts.
    pub fn follow_overrides(&self, apply: impl Fn(TargetOverride) -> bool + Send + 'static) {
        let bus = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let watch = match bus.target_overrides().await {
                    Ok(store) => store
                        .watch_with_history(">")
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match watch {
                    Ok(mut w) => {
                        backoff = Duration::from_millis(100);
                        while let Some(entry) = w.next().await {
                            let Ok(entry) = entry else { break };
                            if let Ok(o) = serde_json::from_slice::<TargetOverride>(&entry.value)
                                && !apply(o)
                            {
                                return;
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "Target overrides not readable yet."),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    }

    /// A file-stored stream with `Nats-Msg-Id` dedup over `duplicate_window`,
    /// created or updated.
    async fn ensure_stream(
        &self,
        name: String,
        subject: String,
        retention: stream::RetentionPolicy,
        max_age: Duration,
        duplicate_window: Duration,
        description: &str,
    ) -> Result<(), BusError> {
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![subject],
            retention,
            storage: stream::StorageType::File,
            max_age,
            duplicate_window,
            num_replicas: self.config.replicas,
            description: Some(description.to_owned()),
            ..Default::default()
        };
        set_up(&format!("stream {name}"), || {
            self.admin.create_or_update_stream(config.clone())
        })
        .await?;
        Ok(())
    }

    /// Publishes a usage event and waits until JetStream stored it. The event id is
    /// the `Nats-Msg-Id`: a repeat within the duplicate window is dropped.
    pub async fn publish_usage(&self, event: &UsageEvent) -> Result<(), BusError> {
        self.publish_stored(self.subjects.usage(), &event.event_id, encode(event)?)
            .await
    }

    /// Publishes several usage events as one message: one JSON object per
    /// line, `Switchyard-Usage-Rows` saying how many (and
    /// `Switchyard-Usage-Free` when every one is billed 0), deduplicated by
    /// `batch_id`; waits for the stream's ack. One message instead of one per
    /// event: one store and delivery in the server, one wake-up of each
    /// consumer.
    pub async fn publish_usage_rows(
        &self,
        batch_id: &str,
        events: &[UsageEvent],
    ) -> Result<(), BusError> {
        let mut payload = Vec::with_capacity(events.len() * 1024);
        for e in events {
            serde_json::to_writer(&mut payload, e).map_err(BusError::Encode)?;
            payload.push(b'\n');
        }
        let free = events.iter().all(|e| e.billed_nanos == Some(0));
        self.publish_usage_payload(batch_id, events.len(), free, Bytes::from(payload))
            .await
    }

    /// [`Bus::publish_usage_rows`] of events serialised already: `rows`
    /// JSON objects, one per line, `free` when every one is billed 0.
    pub async fn publish_usage_payload(
        &self,
        batch_id: &str,
        rows: usize,
        free: bool,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let subject = self.subjects.usage();
        BusError::check_subject(&subject)?;
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, batch_id);
        headers.insert(sy_protocol::header::USAGE_ROWS, rows.to_string().as_str());
        if free {
            headers.insert(sy_protocol::header::USAGE_FREE, "1");
        }
        self.publish_headers(subject, headers, payload).await
    }

    /// Stores `event` again, alone, deduplicated by its id and marked
    /// `Switchyard-Usage-Again` (its first store may have been in a message
    /// of several events, which JetStream cannot match it with).
    pub async fn publish_usage_again(&self, event: &UsageEvent) -> Result<(), BusError> {
        let subject = self.subjects.usage();
        BusError::check_subject(&subject)?;
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, event.event_id.as_str());
        headers.insert(sy_protocol::header::USAGE_AGAIN, "1");
        self.publish_headers(subject, headers, encode(event)?).await
    }

    /// [`Bus::publish_usage`] of an event serialised already (`json`), with
    /// its id.
    pub async fn publish_usage_json(&self, event_id: &str, json: Bytes) -> Result<(), BusError> {
        self.publish_stored(self.subjects.usage(), event_id, json)
            .await
    }

    /// Publishes to a stream with `Nats-Msg-Id` = `msg_id` and waits (at most
    /// `publish_timeout`) until JetStream confirms it stored the message.
    async fn publish_stored(
        &self,
        subject: String,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<(), BusError> {
        self.publish_stored_with(subject, msg_id, None, payload)
            .await
    }

    /// Publishes to a stream with `msg_id` (deduplicated) and, when given,
    /// the W3C `traceparent` header, and waits for the stream's ack.
    async fn publish_stored_with(
        &self,
        subject: String,
        msg_id: &str,
        traceparent: Option<&str>,
        payload: Bytes,
    ) -> Result<(), BusError> {
        BusError::check_subject(&subject)?;
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        if let Some(tp) = traceparent {
            headers.insert(sy_protocol::header::TRACEPARENT, tp);
        }
        self.publish_headers(subject, headers, payload).await
    }

    /// Publishes to a stream with `headers` and waits (at most
    /// `publish_timeout`) for the stream's ack.
    async fn publish_headers(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(BusError::from_publish)?;
        match tokio::time::timeout(self.config.publish_timeout, ack).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(BusError::from_publish(e)),
            Err(_) => Err(BusError::Unavailable),
        }
    }

    /// Creates (or updates) the durable pull consumer of `provider`'s worker pool.
    pub async fn ensure_worker_consumer(
        &self,
        provider: &str,
        max_ack_pending: u32,
    ) -> Result<consumer::PullConsumer, BusError> {
        self.ensure_pull_consumer(
            self.subjects.request_stream(),
            self.subjects.worker_consumer(provider),
            self.subjects.request_filter(provider),
            max_ack_pending,
            self.config.max_deliver,
            format!("Switchyard workers for provider {provider}"),
        )
        .await
    }

    /// A durable pull consumer of a work stream: explicit acks, the configured
    /// ack wait, at most `max_deliver` deliveries (-1: no limit) and
    /// `max_ack_pending` in flight.
    pub(crate) async fn ensure_pull_consumer(
        &self,
        stream: String,
        name: String,
        filter: String,
        max_ack_pending: u32,
        max_deliver: i64,
        description: String,
    ) -> Result<consumer::PullConsumer, BusError> {
        let stream = set_up(&format!("stream {stream}"), || {
            self.admin.get_stream(&stream)
        })
        .await?;
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: filter,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.config.ack_wait,
            max_deliver,
            max_ack_pending: i64::from(max_ack_pending),
            description: Some(description),
            ..Default::default()
        };
        set_up(&format!("consumer {name}"), || {
            stream.create_consumer(config.clone())
        })
        .await
    }

    /// Publishes a request to its provider's subject and waits for JetStream to
    /// store it. The request id is the `Nats-Msg-Id`, so a repeated publish is dropped.
    /// A batch item goes to the batch request stream (`<ns>.breq.<provider>.<batch>`).
    /// `traceparent` (the publishing span's) rides in the message's headers.
    pub async fn publish_request(
        &self,
        envelope: &RequestEnvelope,
        traceparent: Option<&str>,
    ) -> Result<(), BusError> {
        self.publish_encoded(envelope, encode_request(envelope)?, traceparent)
            .await
    }

    /// [`Bus::publish_request`] of `envelope` serialised already (`payload`).
    async fn publish_encoded(
        &self,
        envelope: &RequestEnvelope,
        payload: Bytes,
        traceparent: Option<&str>,
    ) -> Result<(), BusError> {
        if !self.is_connected() {
            return Err(BusError::Unavailable);
        }
        let subject = self.request_subject(envelope);
        let msg_id = UsageEvent::event_id_of(envelope.request_id, envelope.attempt);
        self.publish_stored_with(subject, &msg_id, traceparent, payload)
            .await
    }

    /// [`Bus::publish_request`], again while JetStream cannot store the
    /// request (the connection lost, no stream answering while a new leader
    /// is elected after a node died), until `[nats] publish_retry` has passed
    /// or `deadline`, backing off from 50 ms to 1 s. Every try has the same
    /// `Nats-Msg-Id`, so a try that was stored but whose ack was lost is not
    /// stored twice (the retry is shorter than the duplicate window).
    pub async fn publish_request_retrying(
        &self,
        envelope: &RequestEnvelope,
        traceparent: Option<&str>,
        deadline: tokio::time::Instant,
    ) -> Result<(), BusError> {
        let payload = encode_request(envelope)?;
        self.publish_encoded_retrying(envelope, payload, traceparent, deadline)
            .await
    }

    /// [`Bus::publish_request_retrying`] of `envelope` serialised already
    /// ([`encode_request`]): every try sends the same bytes.
    pub async fn publish_encoded_retrying(
        &self,
        envelope: &RequestEnvelope,
        payload: Bytes,
        traceparent: Option<&str>,
        deadline: tokio::time::Instant,
    ) -> Result<(), BusError> {
        let until = (tokio::time::Instant::now() + self.config.publish_retry).min(deadline);
        let mut wait = Duration::from_millis(50);
        loop {
            match self
                .publish_encoded(envelope, payload.clone(), traceparent)
                .await
            {
                Err(BusError::Unavailable | BusError::NoStream)
                    if tokio::time::Instant::now() + wait < until =>
                {
                    tracing::debug!(
                        ?wait,
                        "JetStream did not store the request; publishing it again."
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                done => return done,
            }
        }
    }

    /// The subject [`Bus::publish_request`] publishes `envelope` to.
    pub fn request_subject(&self, envelope: &RequestEnvelope) -> String {
        match &envelope.batch {
            Some(item) => self
                .subjects
                .batch_request(&envelope.provider, &item.batch_id),
            None => self.subjects.request(
                &envelope.provider,
                &sy_protocol::route_token(&envelope.model),
            ),
        }
    }

    /// Publishes one reply frame on core NATS (no ack; the ingress checks `seq`).
    pub async fn publish_frame(&self, reply_to: &str, frame: &ReplyFrame) -> Result<(), BusError> {
        BusError::check_subject(reply_to)?;
        self.client
            .publish(reply_to.to_owned(), encode(frame)?)
            .await
            .map_err(|e| BusError::Publish(e.to_string()))
    }

    /// Broadcasts what a call taught about its target (core NATS, at most once).
    pub async fn publish_observation(&self, o: &Observation) -> Result<(), BusError> {
        let subject = self.subjects.live(&o.provider);
        BusError::check_subject(&subject)?;
        self.client
            .publish(subject, encode(o)?)
            .await
            .map_err(|e| BusError::Publish(e.to_string()))
    }

    /// Every worker's observations (one subscription per process); unreadable
    /// ones are skipped.
    pub async fn subscribe_live(
        &self,
    ) -> Result<impl futures::Stream<Item = Observation> + Send + Unpin + 'static, BusError> {
        let sub = self
            .client
            .subscribe(self.subjects.live_filter())
            .await
            .map_err(|e| BusError::Setup(format!("live subscription: {e}")))?;
        Ok(sub.filter_map(|msg| {
            let parsed = serde_json::from_slice::<Observation>(&msg.payload);
            if let Err(e) = &parsed {
                tracing::debug!(error = %e, "Ignoring an unreadable observation.");
            }
            futures::future::ready(parsed.ok())
        }))
    }

    /// `provider`'s load as its worker pool's consumer reports it: requests
    /// delivered and not acked, requests waiting, and the cap (max_ack_pending).
    /// An error until the pool's consumer exists.
    pub async fn worker_load(&self, provider: &str) -> Result<(u64, u64, u64), BusError> {
        let stream = self
            .js
            .get_stream_no_info(self.subjects.request_stream())
            .await
            .map_err(|e| BusError::Setup(format!("request stream: {e}")))?;
        let info = stream
            .consumer_info(self.subjects.worker_consumer(provider))
            .await
            .map_err(|e| BusError::Setup(format!("consumer of {provider}: {e}")))?;
        Ok((
            info.num_ack_pending as u64,
            info.num_pending,
            u64::try_from(info.config.max_ack_pending).unwrap_or(u64::MAX),
        ))
    }

    /// Tells every worker that nobody waits for this request any more.
    pub async fn publish_cancel(&self, cancel: &Cancel) -> Result<(), BusError> {
        publish_cancel(&self.client, &self.subjects, cancel).await
    }
}

/// [`Bus::publish_cancel`] for holders of a client and the subjects (the
/// reply router, which has no `Bus`).
pub(crate) async fn publish_cancel(
    client: &async_nats::Client,
    subjects: &Subjects,
    cancel: &Cancel,
) -> Result<(), BusError> {
    client
        .publish(subjects.cancel(cancel.request_id), encode(cancel)?)
        .await
        .map_err(|e| BusError::Publish(e.to_string()))
}

/// A request envelope as [`Bus::publish_encoded_retrying`] sends it.
pub fn encode_request(envelope: &RequestEnvelope) -> Result<Bytes, BusError> {
    encode(envelope)
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, BusError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(BusError::Encode)
}

/// Pulls from `consumer`, at most `per_pull` messages per pull request (server
/// heartbeats every 5 s, pulls expiring after 30 s), and hands each message to
/// `each` until `stop` completes (`Ok`), or the stream fails or ends (`Err`).
/// The pull loop of the worker pools and the batch dispatcher.
pub async fn pull_each(
    consumer: &consumer::PullConsumer,
    per_pull: usize,
    stop: impl std::future::Future<Output = ()>,
    mut each: impl FnMut(jetstream::Message),
) -> Result<(), String> {
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(per_pull)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let mut stop = std::pin::pin!(stop);
    loop {
        let next = tokio::select! {
            () = &mut stop => return Ok(()),
            next = messages.next() => next,
        };
        match next {
            Some(Ok(msg)) => each(msg),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("message stream ended".into()),
        }
    }
}
