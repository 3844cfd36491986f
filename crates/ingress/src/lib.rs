//! The HTTP ingress: authenticate, admit, publish, relay. No provider HTTP
//! happens here; a bad request never reaches the bus.
//!
//! A model call goes, in order, through: `intake` (connections, header and
//! body timeouts, body caps) → the route table below → `extract::identify`
//! (request id, API key → `Caller`) → `flow` (read the body) → `admission`
//! (parse with the client API's module in `surface`, classify, route, shed,
//! build the `RequestEnvelope`) → `flow` (publish on `<ns>.req.<provider>.<model>`,
//! wait for the first frame through the process's one reply subscription) →
//! `relay` (frames in order, deadline, cancel when the client goes away) →
//! `respond` (one JSON body, or server-sent events by the surface's encoder).
//! `endpoints` answers everything that is not a model call; `batch` holds the
//! Files and Batches APIs and the batch dispatcher, which admits its items
//! through the same `admission` step.

mod admission;
pub mod batch;
mod cache;
mod classify;
mod endpoints;
#[cfg(test)]
mod envelope_depth_tests;
mod error;
mod extract;
mod flow;
mod idempotency;
mod intake;
mod live;
pub mod metrics;
mod models;
mod operate;
mod pipeline;
mod presence;
mod pricing;
mod pseudonym;
mod ratelimit;
mod relay;
mod reload;
mod respond;
mod route;
mod stages;
mod state;
pub mod surface;
mod tags;
mod tenants;
mod usage;
mod validate;

pub use error::ApiError;
pub use relay::{Aggregate, AggregatedCall, AggregatedChoice, Pending, StreamEncoder, answer_meta};
pub use route::{estimate_input_tokens, expected_output_tokens};
pub use surface::chat::{SseEncoder, parse_chat};
pub use tags::of_body as body_tags;
pub use validate::validate_chat;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use sy_bus::{Bus, BusError, ReplyRouter};
use sy_config::Config;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::state::AppState;

/// Why the ingress could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The bus failed during setup.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The server failed.
    #[error("HTTP server failed")]
    Serve(#[source] std::io::Error),
    /// The classifier's artifact did not load.
    #[error("classifier: {0}")]
    Classifier(String),
    /// The tenants' key table could not be loaded from the control plane.
    #[error("tenants' keys: {0}")]
    Tenants(String),
}

/// Serves the API on `config.server.listen` until `shutdown` fires, then drains.
pub async fn run(
    config: Arc<Config>,
    bus: Bus,
    shutdown: CancellationToken,
) -> Result<(), IngressError> {
    run_reloading(config, None, bus, shutdown).await
}

/// [`run`], reloading the routing table (models and routers) from `config_path`
/// on SIGHUP or when the file changes; an invalid file is refused, logged, and
/// the old table kept. Requests in flight keep the table they started with.
pub async fn run_reloading(
    config: Arc<Config>,
    config_path: Option<std::path::PathBuf>,
    bus: Bus,
    shutdown: CancellationToken,
) -> Result<(), IngressError> {
    run_roles(config, config_path, bus, shutdown, Roles::default()).await
}

/// What an ingress process does: serve the HTTP API, run batch jobs, or both.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    /// Serve the HTTP API.
    pub http: bool,
    /// Run batch jobs from `<ns>.batch.submit` (the batch dispatcher).
    pub dispatcher: bool,
}

impl Default for Roles {
    fn default() -> Self {
        Roles {
            http: true,
            dispatcher: true,
        }
    }
}

/// [`run_reloading`] with the roles chosen: `Roles { http: false, dispatcher: true }`
/// is a batch dispatcher alone (`switchyard dispatcher`).
pub async fn run_roles(
    config: Arc<Config>,
    config_path: Option<std::path::PathBuf>,
    bus: Bus,
    shutdown: CancellationToken,
    roles: Roles,
) -> Result<(), IngressError> {
    if !roles.http {
        let (_, state) = build(config, bus).await?;
        if let Some(path) = config_path {
            reload::spawn(state.clone(), path, shutdown.clone());
        }
        if roles.dispatcher {
            batch::dispatch::run(state, shutdown).await;
        }
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| IngressError::Bind {
            addr: config.server.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(IngressError::Serve)?;
    let (app, state) = build(config, bus).await?;
    if let Some(path) = config_path {
        reload::spawn(state.clone(), path, shutdown.clone());
    }
    let limits = state.limits.clone();
    let cache = state.cache.clone();
    let dispatcher = roles
        .dispatcher
        .then(|| tokio::spawn(batch::dispatch::run(state, shutdown.clone())));
    let _dispatcher = AbortOnDrop(dispatcher);
    tracing::info!(%addr, "Ingress listening.");
    // On shutdown: stop accepting, let responses in flight finish, but not for
    // longer than the drain deadline.
    let serve = intake::serve(listener, app, limits, shutdown.clone());
    tokio::select! {
        () = serve => {}
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(DRAIN_DEADLINE).await;
        } => {
            tracing::warn!("Drain deadline passed; closing the responses still open.");
        }
    }
    // Free cache hits' usage rows still waiting for their batch.
    if let Some(c) = cache
        && tokio::time::timeout(ROWS_DEADLINE, c.flush())
            .await
            .is_err()
    {
        tracing::warn!("Cache hits' usage rows were still being stored at shutdown.");
    }
    Ok(())
}

/// How long storing the last free cache hits' usage rows may take at shutdown.
const ROWS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Stops the dispatcher task when the ingress returns.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// How long responses in flight may take to finish after shutdown is asked.
const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// The API as an axum router (also used by tests that bind their own listener).
pub async fn router(config: Arc<Config>, bus: Bus) -> Result<Router, IngressError> {
    Ok(build(config, bus).await?.0)
}

async fn build(config: Arc<Config>, bus: Bus) -> Result<(Router, Arc<AppState>), IngressError> {
    bus.ensure_request_stream().await?;
    let ingress_id = config
        .server
        .ingress_id
        .clone()
        .unwrap_or_else(|| Uuid::new_v4().simple().to_string());
    let replies = ReplyRouter::start(bus.client(), bus.subjects(), &ingress_id).await?;
    // Parsing the compiled-in model takes tens of milliseconds: off the runtime.
    let classifier = tokio::task::spawn_blocking(sy_classifier::Classifier::load)
        .await
        .map_err(|e| IngressError::Classifier(e.to_string()))?
        .map_err(|e| IngressError::Classifier(e.to_string()))?;
    let idempotency = match bus
        .idempotency_store(config.server.idempotency_window)
        .await
    {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "No idempotency key store: requests with Idempotency-Key get 503.");
            None
        }
    };
    let pipeline_runs = match bus.pipeline_runs_store(pipeline::RUN_MAX_AGE).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "No pipeline run store: pipelines run, but their runs cannot be read back.");
            None
        }
    };
    let batches = match batch::Stores::open(&bus, &config.batch).await {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            tracing::warn!(error = %e, "No batch storage: the Files and Batches API answers 503.");
            None
        }
    };
    let (tenants, admin) = match &config.tenants {
        Some(_) => {
            let (keys, admin) = tenants::follow(&config, &bus).await?;
            (Some(keys), Some(admin))
        }
        None => (None, None),
    };
    let limits = Arc::new(intake::Limits::new(&config.server));
    let live = Arc::new(sy_router::live::LiveTable::new(config.health));
    live::start(&bus, &live, config.providers.keys().cloned().collect()).await?;
    live::follow_overrides(&bus, &live);
    let rate_limits = ratelimit::RateLimits::start(&config, &bus, &ingress_id).await;
    let identity_secret = crate::pseudonym::IdentitySecret::of(&config);
    let cache = config
        .cache
        .clone()
        .zip(rate_limits.clone())
        .map(|(c, limits)| {
            Arc::new(cache::ResponseCache::new(
                c,
                identity_secret.derive("switchyard response cache"),
                limits,
                &config.nats.namespace,
                config.markup_ppb,
                bus.clone(),
            ))
        });
    let state = Arc::new(AppState {
        bus,
        replies,
        ingress_id,
        keys: config
            .keys
            .iter()
            .map(|k| (k.key.expose().to_owned(), k.name.clone()))
            .collect(),
        tenants,
        admin: admin.clone(),
        routing: std::sync::RwLock::new(Arc::new({
            sy_telemetry::metrics::set_vocabulary(config.model_names());
            crate::state::Routing::from_config(&config)
        })),
        max_body_bytes: config.server.max_body_bytes,
        max_upload_bytes: config.server.max_upload_bytes,
        limits: limits.clone(),
        request_timeout: config.server.request_timeout,
        clickhouse: config.clickhouse.clone(),
        classifier: Arc::new(classifier),
        providers: config.providers.clone(),
        markup_ppb: config.markup_ppb,
        live: live.clone(),
        idempotency,
        batches,
        rate_limits,
        metrics_token: config.metrics.token.clone(),
        image_links_secret: identity_secret.derive("switchyard image links"),
        blobs: Default::default(),
        identity_secret,
        cache,
        pipeline_runs,
    });
    // The admin API (and the console) reads and forces targets, shows the
    // routing table and explains through this ingress.
    if let Some(a) = &state.admin {
        a.lend(Arc::new(operate::Lent(Arc::downgrade(&state))));
    }
    let file_limit = usize::try_from(config.batch.max_file_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(1 << 20);
    // Every /v1 handler runs after `identify` (request id, key); a wrong
    // method or an unknown path is answered without it.
    let identify = axum::middleware::from_fn_with_state(state.clone(), extract::identify);
    let app = Router::new()
        .route(
            "/v1/chat/completions",
            post(flow::chat_completions)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/messages",
            post(flow::messages)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/responses",
            post(flow::responses)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/embeddings",
            post(flow::embeddings_handler)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/rerank",
            post(flow::rerank)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        // Cohere's v2 client posts here; the same API.
        .route(
            "/v2/rerank",
            post(flow::rerank)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/audio/transcriptions",
            post(flow::transcriptions)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/audio/translations",
            post(flow::translations)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/images/edits",
            post(flow::image_edits)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/audio/speech",
            post(flow::speech)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/images/generations",
            post(flow::images)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        // A signed link is its own credential: no key.
        .route(
            "/v1/images/content/{name}",
            axum::routing::get(crate::surface::images::content)
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/route/explain",
            post(endpoints::route_explain)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/route/targets",
            get(live::targets)
                .put(live::force)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/files",
            post(surface::files::upload)
                .get(surface::files::list_files)
                .layer(axum::extract::DefaultBodyLimit::max(file_limit))
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/files/{id}",
            get(surface::files::get_file)
                .delete(surface::files::delete_file)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/files/{id}/content",
            get(surface::files::file_content)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/batches",
            post(surface::batches::create)
                .get(surface::batches::list)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/batches/{id}",
            get(surface::batches::get)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/batches/{id}/cancel",
            post(surface::batches::cancel)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/models",
            get(models::list)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/models/{id}",
            get(models::get)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/billing/balance",
            get(endpoints::get_balance)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/billing/topups",
            post(endpoints::create_topup)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/billing/usage",
            get(endpoints::get_org_usage)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/pipelines/runs/{id}",
            get(endpoints::get_pipeline_run)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .route(
            "/v1/usage",
            get(endpoints::get_usage)
                .route_layer(identify.clone())
                .fallback(endpoints::method_not_allowed),
        )
        .merge(match (&admin, &config.billing.stripe) {
            (Some(a), Some(stripe)) => sy_control::webhooks::stripe(a.store().clone(), stripe),
            _ => axum::Router::new(),
        })
        .merge(match (&admin, &config.billing.yookassa) {
            (Some(a), Some(yookassa)) => {
                sy_control::webhooks::yookassa(a.store().clone(), yookassa)
                    .map_err(IngressError::Tenants)?
            }
            _ => axum::Router::new(),
        })
        .merge(match &admin {
            Some(a) => sy_control::console::router(a.clone()),
            None => axum::Router::new().route("/console", get(endpoints::console_off)),
        })
        .merge(admin.map(sy_control::admin::router).unwrap_or_default())
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(endpoints::readyz))
        .route(metrics::PATH, get(metrics::serve))
        .fallback(endpoints::not_found)
        .layer(axum::middleware::from_fn(extract::json_errors))
        .layer(axum::middleware::from_fn(move |req, next| {
            intake::guard_bodies(limits.clone(), req, next)
        }))
        .layer(axum::middleware::from_fn(metrics::observe))
        .with_state(state.clone());
    Ok((app, state))
}
