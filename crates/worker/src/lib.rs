//! The worker: a pull consumer per provider, calling the provider and streaming
//! the answer back to the ingress.
//!
//! For each provider it serves, [`run`] creates (idempotently) the durable consumer
//! `worker-<provider>` on `<ns>.req.<provider>.>` and handles every
//! [`RequestEnvelope`] it pulls in its own task: drop it if its deadline passed or
//! it was cancelled, call the provider through its adapter (`sy-providers`), publish
//! [`ChunkFrame`]s with consecutive `seq` and then exactly one [`FinalFrame`] to the
//! envelope's `reply_to`, and ack. Long calls send in-progress acks so JetStream
//! does not redeliver them. A [`Cancel`] on `<ns>.cancel.<request>` (one wildcard
//! subscription per process) drops the upstream call, which closes the provider
//! connection: an abandoned request stops costing tokens. Every attempt ends with
//! one [`UsageEvent`](sy_protocol::UsageEvent) on `<ns>.usage` (see [`usage`]),
//! stored before the request is acked. A failed call is retried with backoff,
//! handed to the next target of the request's order (republished), or, after
//! output reached the client, continued there (mid-stream recovery); every call
//! broadcasts an [`Observation`](sy_protocol::Observation) that feeds every
//! process's breakers: failures at once, successes to a quiet target summed
//! every tenth of a second (see `handle`, `observations` and docs/reliability.md).
//!
//! Batch items come through a second consumer per provider, `batch-<provider>`
//! on `<ns>.breq.<provider>.>`, capped by the provider's `batch_concurrency`.
//! They are served the same way, except that their frames are kept and stored
//! with the final frame as the item's result (`<ns>.batch.result.<batch>.<index>`)
//! before the ack, and an item whose result is stored already is skipped
//! (docs/batches.md).
//!
//! [`ChunkFrame`]: sy_protocol::ChunkFrame
//! [`FinalFrame`]: sy_protocol::FinalFrame
//! [`Cancel`]: sy_protocol::Cancel

mod attempt;
mod cancel;
mod done;
mod failover;
mod failure;
mod handle;
mod metrics;
mod observations;
mod replier;
mod shared;
mod splice;
pub mod tokens;
mod usage;
mod usage_sink;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sy_bus::Bus;
use sy_config::Config;
use sy_providers::AnyProvider;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use cancel::CancelRegistry;
pub use sy_protocol::RequestEnvelope;

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A provider named on the command line is not in the config.
    #[error("no provider named \"{0}\" in the config")]
    UnknownProvider(String),
    /// A provider's adapter could not be built.
    #[error("provider {name}: {source}")]
    Provider {
        /// The provider entry.
        name: String,
        /// Why.
        #[source]
        source: sy_providers::ProviderError,
    },
    /// The bus failed during setup.
    #[error(transparent)]
    Bus(#[from] sy_bus::BusError),
    /// The control plane's provider credentials could not be loaded.
    #[error("provider credentials: {0}")]
    Credentials(String),
}

/// How long in-flight requests may take to finish after shutdown is asked.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// The control plane's provider credentials, loaded and followed, when
/// `[credentials]` is on. A worker that cannot open them does not start: it
/// would call an org's provider with someone else's key.
async fn credentials(
    config: &Config,
    bus: &Bus,
) -> Result<Option<Arc<sy_control::credentials::CredentialTable>>, WorkerError> {
    let (Some(c), Some(pg)) = (&config.credentials, &config.postgres) else {
        return Ok(None);
    };
    let fail = |e: &dyn std::fmt::Display| WorkerError::Credentials(e.to_string());
    let keys = sy_control::sealed::keyring_of(c).map_err(|e| fail(&e))?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(pg.url.expose())
        .map_err(|e| fail(&e))?;
    let resync = config
        .tenants
        .as_ref()
        .map_or(Duration::from_secs(60), |t| t.resync);
    let table = sy_control::credentials::follow(
        pool,
        keys,
        bus.client().clone(),
        bus.subjects().credential_notices(),
        resync,
    )
    .await
    .map_err(|e| fail(&e))?;
    Ok(Some(table))
}

/// Serves `providers` (all configured ones when empty) until `shutdown` fires,
/// then stops pulling and waits for in-flight requests (up to a grace period).
pub async fn run(
    config: Arc<Config>,
    bus: Bus,
    providers: Vec<String>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let names: Vec<String> = if providers.is_empty() {
        config.providers.keys().cloned().collect()
    } else {
        providers
    };
    let mut adapters = HashMap::new();
    for name in &names {
        let pc = config
            .providers
            .get(name)
            .ok_or_else(|| WorkerError::UnknownProvider(name.clone()))?;
        let adapter = AnyProvider::from_config(pc).map_err(|source| WorkerError::Provider {
            name: name.clone(),
            source,
        })?;
        adapters.insert(name.clone(), (adapter, pc.clone()));
    }
    bus.ensure_request_stream().await?;
    bus.ensure_batch_streams().await?;
    bus.ensure_usage_stream(config.accounting.usage_max_age)
        .await?;
    // Tokenizers load when an estimate first needs one (crate::tokens).
    let worker_id = format!(
        "worker-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let cancels = CancelRegistry::start(&bus).await?;
    let done = Arc::new(done::DoneMarks::open(&bus).await);
    let usage = usage_sink::UsageSink::start(bus.clone());
    // Live health from every worker's calls (this one's included), so that a
    // target another worker found dead is not called while a fallback can serve.
    let live = Arc::new(sy_router::live::LiveTable::new(config.health));
    let mut observations = bus.subscribe_live().await?;
    tokio::spawn({
        let live = Arc::downgrade(&live);
        let me = worker_id.clone();
        async move {
            while let Some(o) = observations.next().await {
                let Some(live) = live.upgrade() else { break };
                // This worker's own calls were folded in already.
                if o.worker_id != me {
                    live.observe(&o, sy_protocol::now_unix_ms());
                }
            }
        }
    });
    bus.follow_overrides({
        let live = Arc::downgrade(&live);
        move |o| {
            let Some(live) = live.upgrade() else {
                return false;
            };
            live.force(&o.provider, &o.model, o.state.forced());
            true
        }
    });
    let observations_out = observations::Observations::start(bus.clone(), worker_id.clone());
    let credentials = credentials(&config, &bus).await?;
    let all_providers = Arc::new(config.providers.clone());
    let tracker = TaskTracker::new();
    let ack_wait = config.nats.ack_wait;
    let mut pools = Vec::new();
    for (_, (adapter, provider)) in adapters {
        let max_in_flight = provider.max_concurrency.get();
        let cx = Arc::new(shared::Shared {
            bus: bus.clone(),
            provider,
            adapter,
            cancels: cancels.clone(),
            progress_every: ack_wait / 3,
            worker_id: worker_id.clone(),
            markup_ppb: config.markup_ppb,
            all_providers: all_providers.clone(),
            live: live.clone(),
            observations: observations_out.clone(),
            batch_price_ppb: config.batch.price_multiplier_ppb,
            batch_max_deliver: config.batch.max_deliver,
            unsettled: Default::default(),
            done: done.clone(),
            usage: usage.clone(),
            in_hand: Default::default(),
            credentials: credentials.clone(),
            blobs: Default::default(),
        });
        // Batch items come from their own stream and consumer, whose cap keeps
        // a running batch from crowding out interactive requests.
        let batch_cap = cx.provider.batch_concurrency.get();
        pools.push(tokio::spawn(pool(
            cx.clone(),
            Queue::Batch,
            batch_cap,
            tracker.clone(),
            shutdown.clone(),
        )));
        pools.push(tokio::spawn(pool(
            cx,
            Queue::Interactive,
            max_in_flight,
            tracker.clone(),
            shutdown.clone(),
        )));
    }
    tracing::info!(providers = ?names, "Worker started.");
    shutdown.cancelled().await;
    tracing::info!(in_flight = tracker.len(), "Worker draining.");
    for p in pools {
        p.abort();
    }
    tracker.close();
    if tokio::time::timeout(DRAIN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = tracker.len(),
            "Worker stopped with requests in flight; JetStream will redeliver them."
        );
    }
    // The successes still summed go out with the worker.
    observations_out.flush().await;
    Ok(())
}

/// Which of a provider's two queues a pool pulls from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    /// `<ns>.req.<provider>.>`: clients waiting.
    Interactive,
    /// `<ns>.breq.<provider>.>`: batch items.
    Batch,
}

/// Pulls one provider's requests forever, re-creating the consumer after errors
/// (a NATS restart, a deleted stream).
async fn pool(
    cx: Arc<shared::Shared>,
    queue: Queue,
    max_in_flight: u32,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match pull(&cx, queue, max_in_flight, &tracker, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(provider = %cx.provider.name, ?queue, error = %e, "Pulling requests failed, retrying.");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                let ensured = match queue {
                    Queue::Interactive => cx.bus.ensure_request_stream().await,
                    Queue::Batch => cx.bus.ensure_batch_streams().await,
                };
                if let Err(e) = ensured {
                    tracing::debug!(error = %e, "Request stream not ready yet.");
                }
            }
        }
    }
}

async fn pull(
    cx: &Arc<shared::Shared>,
    queue: Queue,
    max_in_flight: u32,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let consumer = match queue {
        Queue::Interactive => {
            cx.bus
                .ensure_worker_consumer(&cx.provider.name, max_in_flight)
                .await
        }
        Queue::Batch => {
            cx.bus
                .ensure_batch_worker_consumer(
                    &cx.provider.name,
                    max_in_flight,
                    cx.batch_max_deliver,
                )
                .await
        }
    }
    .map_err(|e| e.to_string())?;
    tracing::info!(provider = %cx.provider.name, ?queue, "Pulling requests.");
    let per_pull = max_in_flight.clamp(1, 256) as usize;
    sy_bus::pull_each(&consumer, per_pull, shutdown.cancelled(), |msg| {
        let cx = cx.clone();
        // Boxed first: a request's future is some 25 KB, which the task
        // would otherwise copy twice on its way into the runtime (callgrind:
        // 55 k instructions per request; boxed, one copy).
        tracker.spawn(Box::pin(handle::handle(cx, msg)));
    })
    .await
}

/// A bus on the shared test NATS in a namespace of its own, and its client.
#[cfg(test)]
async fn test_bus() -> (Bus, async_nats::Client) {
    let ns = sy_test_support::unique_namespace();
    let config = sy_config::Config::from_toml(
        &format!(
            "[nats]\nurl = \"{}\"\nnamespace = \"{ns}\"\n",
            sy_test_support::nats_url()
        ),
        &sy_config::MapEnv::default(),
    )
    .expect("config");
    let client = sy_test_support::nats().await;
    (Bus::from_client(client.clone(), &config.nats), client)
}
