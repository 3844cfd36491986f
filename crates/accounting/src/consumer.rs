use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{AckKind, consumer};
use futures::StreamExt;
use sy_bus::Bus;
use sy_config::{ClickhouseConfig, Config};
use sy_protocol::UsageEvent;
use tokio_util::sync::CancellationToken;

use crate::{AccountingError, RequestRow, client};

/// The durable consumer every accounting process shares.
pub const CONSUMER: &str = "accounting";

/// Consumes usage events into ClickHouse until `shutdown` fires; the batch in
/// hand is inserted (or naked) before returning.
pub async fn run(
    config: Arc<Config>,
    bus: Bus,
    shutdown: CancellationToken,
) -> Result<(), AccountingError> {
    let ch_config = config
        .clickhouse
        .clone()
        .ok_or(AccountingError::NotConfigured)?;
    bus.ensure_usage_stream(config.accounting.usage_max_age)
        .await?;
    let writer = Writer {
        // The crate quotes the table name as one identifier: name the database here.
        client: client(&ch_config).with_database(&ch_config.database),
        table: "requests".to_owned(),
        config: ch_config,
        // An insert that outlives the ack wait races its own redelivery; give up earlier.
        timeout: config.accounting.ack_wait / 2,
        limiter: match &config.redis {
            Some(r) => Some(sy_limits::Limiter::connect_or_retry(r.url.expose().to_owned()).await),
            None => None,
        },
    };
    let max_rows = config.accounting.max_rows;
    let max_wait = config.accounting.max_wait;
    let ack_wait = config.accounting.ack_wait;
    tracing::info!(max_rows, ?max_wait, "Accounting started.");
    let _pending = AbortOnDrop(tokio::spawn(watch_pending(bus.clone())));
    let mut backoff = Duration::from_millis(100);
    loop {
        match consume(&bus, &writer, max_rows, max_wait, ack_wait, &shutdown).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "Consuming usage events failed, retrying.");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Sets `switchyard_accounting_pending` from the shared consumer's info every
/// 5 s: the events JetStream holds for it, delivered or not, unacknowledged.
async fn watch_pending(bus: Bus) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        if let Some(pending) = pending_events(&bus).await {
            sy_telemetry::metrics::get()
                .accounting_pending
                .set(i64::try_from(pending).unwrap_or(i64::MAX));
        }
    }
}

/// The usage events JetStream holds for the accounting consumer, delivered
/// or not, not yet acknowledged; `None` while the stream or the consumer
/// cannot be read.
pub async fn pending_events(bus: &Bus) -> Option<u64> {
    let stream = bus
        .jetstream()
        .get_stream(bus.subjects().usage_stream())
        .await
        .ok()?;
    let info = stream.consumer_info(CONSUMER).await.ok()?;
    Some(info.num_pending.saturating_add(info.num_ack_pending as u64))
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn consume(
    bus: &Bus,
    writer: &Writer,
    max_rows: usize,
    max_wait: Duration,
    ack_wait: Duration,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let stream = bus
        .jetstream()
        .get_stream(bus.subjects().usage_stream())
        .await
        .map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(CONSUMER.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            // Twice the batch, so one process can fill a batch while the last is inserted.
            max_ack_pending: i64::try_from(max_rows * 2).unwrap_or(i64::MAX),
            description: Some("Switchyard accounting: usage events into ClickHouse".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(max_rows.min(10_000))
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let mut batch: Vec<Pending> = Vec::with_capacity(max_rows);
    loop {
        // The first event of a batch may wait forever; the rest until max_wait
        // after the first arrived.
        let mut flush_at = tokio::time::Instant::now() + max_wait;
        while batch.len() < max_rows {
            let next = if batch.is_empty() {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    next = messages.next() => next,
                };
                flush_at = tokio::time::Instant::now() + max_wait;
                next
            } else {
                match tokio::time::timeout_at(flush_at, messages.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            };
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    writer.nak_all(&mut batch).await;
                    return Err(e.to_string());
                }
                None => {
                    writer.nak_all(&mut batch).await;
                    return Err("usage message stream ended".into());
                }
            };
            let header = |name| msg.headers.as_ref().and_then(|h| h.get(name)).is_some();
            // An event stored again (by a worker finishing a redelivered
            // request) is looked for first, as a redelivered message is.
            let redelivered = msg.info().map(|i| i.delivered > 1).unwrap_or(false)
                || header(sy_protocol::header::USAGE_AGAIN);
            let rows = header(sy_protocol::header::USAGE_ROWS);
            let (msg, acker) = msg.split();
            let before = batch.len();
            for event in sy_protocol::legacy::read_usage_events(&msg.payload, rows) {
                match event {
                    Ok(event) => batch.push((event, None, redelivered)),
                    Err(e) => tracing::error!(error = %e, "Dropping an unreadable usage event."),
                }
            }
            // The message is acked (or nak'd) with its last row.
            match batch.get_mut(before..).and_then(|rows| rows.last_mut()) {
                Some(last) => last.1 = Some(acker),
                None => {
                    let _ = acker.ack_with(AckKind::Term).await;
                }
            }
        }
        writer.flush(&mut batch).await;
    }
}

/// Settlements sent to Redis at once (see [`Writer::settle`]).
const SETTLE_IN_FLIGHT: usize = 32;

/// A usage event waiting for its insert, with its message's acker when it
/// is the message's last event (a message may carry several), and whether
/// the message was delivered before.
type Pending = (UsageEvent, Option<Acker>, bool);

struct Writer {
    client: clickhouse::Client,
    table: String,
    config: ClickhouseConfig,
    timeout: Duration,
    /// Settles token reservations (when `[redis]` is configured).
    limiter: Option<Arc<std::sync::OnceLock<sy_limits::Limiter>>>,
}

impl Writer {
    /// Inserts the batch and acks it; on failure naks it with a delay so it comes back.
    #[tracing::instrument(name = "accounting.flush", skip_all, fields(rows = batch.len()))]
    async fn flush(&self, batch: &mut Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        let result = tokio::time::timeout(self.timeout, self.insert(batch))
            .await
            .unwrap_or_else(|_| Err(AccountingError::Timeout(self.timeout)));
        match result {
            Ok(inserted) => {
                tracing::debug!(inserted, "Usage rows inserted.");
                self.settle(batch).await;
                for acker in batch.drain(..).filter_map(|(_, a, _)| a) {
                    if let Err(e) = acker.ack().await {
                        tracing::warn!(error = %e, "Acking a usage event failed; it will be redelivered and skipped.");
                    }
                }
            }
            Err(e) => {
                sy_telemetry::metrics::get().accounting_insert_errors.inc();
                tracing::warn!(error = %e, rows = batch.len(), "Inserting usage rows failed; they stay in the stream.");
                self.nak_all(batch).await;
            }
        }
    }

    /// Settles the reservations of the batch's requests to the tokens their
    /// attempts used and what they were billed (each once: a redelivered
    /// event settles nothing). A failure leaves a reservation standing until
    /// it lapses (a token bucket refills within a minute; a budget's hold is
    /// swept when the request's deadline has passed), never blocks accounting.
    async fn settle(&self, batch: &[Pending]) {
        let Some(slot) = &self.limiter else {
            return;
        };
        let tickets = batch.iter().filter(|(e, _, _)| e.limits.is_some()).count();
        if tickets == 0 {
            return;
        }
        let Some(limiter) = slot.get() else {
            tracing::warn!(
                tickets,
                "Redis is not connected: token reservations are not settled."
            );
            return;
        };
        let settles = batch.iter().filter_map(|(e, _, _)| {
            let ticket = e.limits.as_ref()?;
            let t = &e.tokens;
            // A cache hit's tokens are the stored answer's: no provider
            // produced them, so they take nothing from a tokens-per-minute limit.
            let used = if e.cache_hit {
                0
            } else {
                t.input_tokens + t.cached_input_tokens + t.cache_write_tokens + t.output_tokens
            };
            let request_id = e.request_id.to_string();
            Some(async move {
                limiter
                    .settle(sy_limits::Settlement {
                        org: &ticket.org,
                        request_id: &request_id,
                        attempt_id: &e.event_id,
                        buckets: &ticket.buckets,
                        reserved: ticket.reserved_tokens,
                        used: u32::try_from(used).unwrap_or(u32::MAX),
                        budgets: &ticket.budgets,
                        billed_nanos: e.billed_nanos.unwrap_or(0),
                        allowance: ticket.allowance.as_ref().map(|(id, n)| (id.as_str(), *n)),
                    })
                    .await
            })
        });
        // A bounded number at a time on the one connection (pipelined): a
        // batch of thousands of rows at once held a command and its reply
        // for each, tens of MB at the peak. When a whole slice fails, Redis
        // is away: the rest are not tried (each slice would wait out the
        // response time-out, holding up the next batch) and lapse.
        let mut settles = settles;
        let mut failed = 0;
        loop {
            let some: Vec<_> = settles.by_ref().take(SETTLE_IN_FLIGHT).collect();
            let tried = some.len();
            if tried == 0 {
                break;
            }
            let lost = futures::future::join_all(some)
                .await
                .into_iter()
                .filter(Result::is_err)
                .count();
            failed += lost;
            if lost == tried {
                failed += settles.count();
                break;
            }
        }
        if failed > 0 {
            tracing::warn!(
                failed,
                "Settling token reservations failed; they lapse within a minute."
            );
        }
    }

    async fn nak_all(&self, batch: &mut Vec<Pending>) {
        for acker in batch.drain(..).filter_map(|(_, a, _)| a) {
            let _ = acker
                .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                .await;
        }
    }

    /// Inserts the rows not stored yet; returns how many were inserted.
    async fn insert(&self, batch: &[Pending]) -> Result<usize, AccountingError> {
        let stored = self.already_stored(batch).await?;
        let mut insert = self.client.insert::<RequestRow>(&self.table).await?;
        let mut n = 0;
        for (event, _, _) in batch {
            if stored.contains(&event.event_id) {
                continue;
            }
            insert.write(&RequestRow::from(event)).await?;
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        insert.end().await?;
        let m = sy_telemetry::metrics::get();
        m.accounting_rows.inc_by(n as u64);
        let now = sy_protocol::now_unix_ms();
        for (event, _, _) in batch {
            if !stored.contains(&event.event_id) {
                let lag = now.saturating_sub(event.finished_unix_ms);
                m.accounting_lag.observe(lag as f64 / 1000.0);
            }
        }
        Ok(n)
    }

    /// Event ids of redelivered events whose row exists (inserted, but the ack was lost).
    async fn already_stored(&self, batch: &[Pending]) -> Result<HashSet<String>, AccountingError> {
        let again: Vec<&UsageEvent> = batch
            .iter()
            .filter(|(_, _, r)| *r)
            .map(|(e, _, _)| e)
            .collect();
        if again.is_empty() {
            return Ok(HashSet::new());
        }
        let min_ts = again
            .iter()
            .map(|e| e.received_unix_ms / 1000)
            .min()
            .unwrap_or(0);
        let max_ts = again
            .iter()
            .map(|e| e.received_unix_ms / 1000)
            .max()
            .unwrap_or(0);
        // Event ids are `<32 hex>-<digits>` (checked by the schema): safe to inline.
        let ids: Vec<String> = again
            .iter()
            .filter(|e| {
                e.event_id
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b'-')
            })
            .map(|e| format!("'{}'", e.event_id))
            .collect();
        let query = format!(
            "SELECT event_id FROM {}.requests WHERE ts >= toDateTime({min_ts}) AND ts <= toDateTime({max_ts}) AND event_id IN ({})",
            self.config.database,
            ids.join(",")
        );
        let found: Vec<String> = self.client.query(&query).fetch_all().await?;
        Ok(found.into_iter().collect())
    }
}
