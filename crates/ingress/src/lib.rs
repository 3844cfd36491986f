//! The HTTP ingress: authenticate, validate, route, publish, relay.
//!
//! [`run`] serves the client APIs with axum: `POST /v1/chat/completions`
//! (streamed as OpenAI SSE or not), `POST /v1/messages` (Anthropic's Messages API,
//! translated by [`messages`]), `POST /v1/responses` (OpenAI's Responses API,
//! stateless, by [`responses`]), `GET /v1/models`, `GET /v1/usage` (the key's
//! own usage from ClickHouse), and `GET /healthz` and `GET /readyz`. A request is authenticated (static bearer keys), parsed once,
//! validated, resolved to its route's first target, and published as a
//! `RequestEnvelope` on `<ns>.req.<provider>.<route>`; no provider HTTP happens
//! here. Replies come back on one wildcard subscription per process
//! (`sy_bus::ReplyRouter`) and are relayed to the client in OpenAI's wire format as
//! they arrive. Errors are rendered by [`ApiError`] in OpenAI's error body with the
//! right status; a bad request never reaches the bus. When the client goes away
//! before the answer is complete, a `Cancel` stops the worker's upstream call.

mod admission;
pub mod batch;
mod classify;
#[cfg(test)]
mod envelope_depth_tests;
mod error;
mod extract;
mod idempotency;
mod intake;
mod live;
mod relay;
mod reload;
mod respond;
mod route;
pub mod surface;
mod usage;
mod validate;

pub use error::ApiError;
pub use relay::{
    Aggregate, AggregatedCall, AggregatedChoice, Pending, ResponseNames, SseEncoder, StreamEncoder,
};
pub use route::{estimate_input_tokens, expected_output_tokens};
pub use validate::{parse_chat, validate_chat};

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sy_bus::{Bus, BusError, ReplyRouter};
use sy_config::Config;
use sy_protocol::{ApiSurface, ErrorCode, ReplyFrame, StartInfo, header as hdr, now_unix_ms};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::intake::{check_content_type, read_body};
use crate::respond::{json_response, sse_response, start_of, with_headers};
use crate::surface::{messages, responses};

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
}

struct AppState {
    bus: Bus,
    replies: ReplyRouter,
    ingress_id: String,
    keys: HashMap<String, String>,
    routing: std::sync::RwLock<Arc<reload::Routing>>,
    max_body_bytes: usize,
    /// Bounds on connections and on bodies being received.
    limits: Arc<intake::Limits>,
    request_timeout: std::time::Duration,
    clickhouse: Option<sy_config::ClickhouseConfig>,
    classifier: Arc<sy_classifier::Classifier>,
    providers: std::collections::BTreeMap<String, sy_config::ProviderConfig>,
    live: Arc<sy_router::live::LiveTable>,
    /// The `Idempotency-Key` store; none if NATS refused to create it.
    idempotency: Option<async_nats::jetstream::kv::Store>,
    /// Batch records and files; none if NATS refused to create them.
    batches: Option<Arc<batch::Stores>>,
}

impl AppState {
    /// The routing table now (models and routers); a reload swaps it whole.
    fn routing(&self) -> Arc<reload::Routing> {
        match self.routing.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
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
    let dispatcher = roles
        .dispatcher
        .then(|| tokio::spawn(batch::dispatch::run(state, shutdown.clone())));
    let _dispatcher = AbortOnDrop(dispatcher);
    tracing::info!(%addr, "Ingress listening.");
    // On shutdown: stop accepting, let responses in flight finish, but not for
    // longer than the drain deadline.
    let serve = intake::serve(listener, app, limits, shutdown.clone());
    tokio::select! {
        () = serve => Ok(()),
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(DRAIN_DEADLINE).await;
        } => {
            tracing::warn!("Drain deadline passed; closing the responses still open.");
            Ok(())
        }
    }
}

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
    let batches = match batch::Stores::open(&bus, &config.batch).await {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            tracing::warn!(error = %e, "No batch storage: the Files and Batches API answers 503.");
            None
        }
    };
    let limits = Arc::new(intake::Limits::new(&config.server));
    let live = Arc::new(sy_router::live::LiveTable::new(config.health));
    live::start(&bus, &live, config.providers.keys().cloned().collect()).await?;
    live::follow_overrides(&bus, &live);
    let state = Arc::new(AppState {
        bus,
        replies,
        ingress_id,
        keys: config
            .keys
            .iter()
            .map(|k| (k.key.expose().to_owned(), k.name.clone()))
            .collect(),
        routing: std::sync::RwLock::new(Arc::new(reload::Routing::from_config(&config))),
        max_body_bytes: config.server.max_body_bytes,
        limits: limits.clone(),
        request_timeout: config.server.request_timeout,
        clickhouse: config.clickhouse.clone(),
        classifier: Arc::new(classifier),
        providers: config.providers.clone(),
        live: live.clone(),
        idempotency,
        batches,
    });
    let file_limit = usize::try_from(config.batch.max_file_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(1 << 20);
    // Every /v1 handler runs after `identify` (request id, key); a wrong
    // method or an unknown path is answered without it.
    let identify = axum::middleware::from_fn_with_state(state.clone(), extract::identify);
    let app = Router::new()
        .route(
            "/v1/chat/completions",
            post(chat_completions)
                .route_layer(identify.clone())
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/messages",
            post(messages)
                .route_layer(identify.clone())
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/responses",
            post(responses)
                .route_layer(identify.clone())
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/embeddings",
            post(embeddings_handler)
                .route_layer(identify.clone())
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/route/explain",
            post(route_explain)
                .route_layer(identify.clone())
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/route/targets",
            get(live::targets)
                .put(live::force)
                .route_layer(identify.clone())
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/files",
            post(batch::api::upload)
                .get(batch::api::list_files)
                .layer(axum::extract::DefaultBodyLimit::max(file_limit))
                .route_layer(identify.clone())
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/files/{id}",
            get(batch::api::get_file)
                .delete(batch::api::delete_file)
                .route_layer(identify.clone())
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/files/{id}/content",
            get(batch::api::file_content)
                .route_layer(identify.clone())
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/batches",
            post(batch::api::create)
                .get(batch::api::list)
                .route_layer(identify.clone())
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/batches/{id}",
            get(batch::api::get)
                .route_layer(identify.clone())
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/batches/{id}/cancel",
            post(batch::api::cancel)
                .route_layer(identify.clone())
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/models",
            get(list_models)
                .route_layer(identify.clone())
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/usage",
            get(get_usage)
                .route_layer(identify.clone())
                .fallback(method_not_allowed),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(extract::json_errors))
        .layer(axum::middleware::from_fn(move |req, next| {
            intake::guard_bodies(limits.clone(), req, next)
        }))
        .with_state(state.clone());
    Ok((app, state))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.bus.is_connected() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "NATS is not connected").into_response()
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("Invalid URL ({} {})", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "Method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn list_models(State(state): State<Arc<AppState>>, _: extract::Caller) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        state.routing().model_list.clone(),
    )
        .into_response()
}

async fn get_usage(
    State(state): State<Arc<AppState>>,
    extract::Caller(key_id): extract::Caller,
    axum::extract::Query(params): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    match usage::usage(state.clickhouse.as_ref(), &key_id, &params).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, ApiSurface::ChatCompletions, req).await
}

async fn messages(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, ApiSurface::Messages, req).await
}

async fn responses(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, ApiSurface::Responses, req).await
}

async fn route_explain(
    State(state): State<Arc<AppState>>,
    _: extract::Caller,
    extract::RequestId(request_id): extract::RequestId,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let result = async {
        check_content_type(&parts.headers)?;
        let body = read_body(&state, &parts.headers, body).await?;
        let request = admission::parse_request(ApiSurface::ChatCompletions, &body)?;
        let hints = admission::Hints::from_headers(&parts.headers);
        let prediction = classify::decide(&state.classifier, &hints, &request)?;
        route::explain(&state, &request, &prediction, request_id)
    }
    .await;
    match result {
        Ok(v) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            serde_json::to_vec(&v).unwrap_or_default(),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn embeddings_handler(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, ApiSurface::Embeddings, req).await
}

#[tracing::instrument(name = "ingress.request", skip_all, fields(request_id, api = ?surface, model, stream))]
async fn handle(state: Arc<AppState>, surface: ApiSurface, req: Request) -> Response {
    if req.headers().contains_key(idempotency::HEADER) {
        return idempotency::serve(state, surface, req, move |state, req| {
            handle_once(state, surface, req)
        })
        .await;
    }
    handle_once(state, surface, req).await
}

async fn handle_once(state: Arc<AppState>, surface: ApiSurface, req: Request) -> Response {
    let request_id = match req.extensions().get::<extract::RequestId>() {
        Some(id) => id.0,
        None => {
            return ApiError::new(ErrorCode::Internal, "the request was not identified")
                .render(surface);
        }
    };
    tracing::Span::current().record("request_id", tracing::field::display(request_id));
    match chat(&state, surface, request_id, req).await {
        Ok(resp) => resp,
        Err((e, start, class)) => {
            tracing::debug!(code = %e.code, error = %e.message, "Request failed.");
            with_headers(e.render(surface), request_id, start.as_ref(), class)
        }
    }
}

type ChatError = (ApiError, Option<StartInfo>, Option<sy_classifier::Class>);

async fn chat(
    state: &Arc<AppState>,
    surface: ApiSurface,
    request_id: Uuid,
    req: Request,
) -> Result<Response, ChatError> {
    let received_unix_ms = now_unix_ms();
    let (parts, body) = req.into_parts();
    let key_id = parts
        .extensions
        .get::<extract::Caller>()
        .map(|c| c.0.as_str())
        .ok_or_else(|| {
            let e = ApiError::new(ErrorCode::Internal, "the request was not authenticated");
            (e, None, None)
        })?;
    check_content_type(&parts.headers).map_err(|e| (e, None, None))?;
    let body = read_body(state, &parts.headers, body)
        .await
        .map_err(|e| (e, None, None))?;
    let admitted = admission::admit(
        state,
        surface,
        &body,
        admission::Admission {
            request_id,
            key_id,
            hints: admission::Hints::from_headers(&parts.headers),
            received_unix_ms,
            deadline_unix_ms: received_unix_ms + state.request_timeout.as_millis() as u64,
            batch: None,
        },
    )
    .map_err(|(e, class)| (e, None, class))?;
    let admission::Admitted {
        envelope,
        class,
        route_header,
        base64,
    } = admitted;
    let span = tracing::Span::current();
    span.record("model", tracing::field::display(&envelope.request.model));
    span.record("stream", envelope.request.is_stream());
    let deadline = tokio::time::Instant::now() + state.request_timeout;
    let stream = envelope.request.is_stream();
    let include_usage = envelope.request.wants_stream_usage();
    // Register before publishing so that no frame can arrive unseen.
    let rx = state
        .replies
        .register(request_id, sy_protocol::REPLY_BUFFER_FRAMES);
    if let Err(e) = state.bus.publish_request(&envelope).await {
        drop(rx);
        let err = match e {
            BusError::PayloadTooLarge => ApiError::new(
                ErrorCode::PayloadTooLarge,
                "The request is larger than the message bus accepts.",
            ),
            BusError::Unavailable | BusError::NoStream => {
                if matches!(e, BusError::NoStream) {
                    // The server lost the stream (e.g. restarted without its store):
                    // recreate it so the next request goes through.
                    let bus = state.bus.clone();
                    tokio::spawn(async move {
                        if let Err(e) = bus.ensure_request_stream().await {
                            tracing::warn!(error = %e, "Recreating the request stream failed.");
                        }
                    });
                }
                ApiError {
                    retry_after_secs: Some(1),
                    ..ApiError::new(
                        ErrorCode::BusUnavailable,
                        "The request queue is unavailable; retry shortly.",
                    )
                }
            }
            other => {
                tracing::error!(error = %other, "Publishing a request failed.");
                ApiError::new(
                    ErrorCode::BusUnavailable,
                    "The request could not be queued.",
                )
            }
        };
        return Err((err, None, class));
    }
    tracing::trace!("Request published.");
    let mut pending = Pending::new(rx, state.bus.clone(), deadline);
    let first = pending.next().await.map_err(|e| (e, None, class))?;
    tracing::trace!("First frame received.");
    let start = start_of(&first).cloned();
    let names = ResponseNames::from_start(start.as_ref(), request_id, &envelope.model);
    if let ReplyFrame::Final(f) = &first
        && let Some(e) = &f.error
    {
        return Err((ApiError::from_frame(e), start, class));
    }
    let resp = match (surface, stream) {
        (ApiSurface::Messages, true) => {
            sse_response(pending, first, messages::MessagesEncoder::new(names))
        }
        (ApiSurface::Responses, true) => {
            sse_response(pending, first, responses::ResponsesEncoder::new(names))
        }
        (_, true) => sse_response(pending, first, SseEncoder::new(names, include_usage)),
        (surface, false) => json_response(surface, pending, first, &names, base64)
            .await
            .map_err(|e| (e, start.clone(), class))?,
    };
    let mut resp = with_headers(resp, request_id, start.as_ref(), class);
    if let Ok(v) = HeaderValue::from_str(&route_header) {
        resp.headers_mut().insert(hdr::ROUTE, v);
    }
    Ok(resp)
}
