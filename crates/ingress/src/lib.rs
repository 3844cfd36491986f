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

pub mod batch;
mod classify;
pub mod embeddings;
#[cfg(test)]
mod envelope_depth_tests;
mod error;
mod extract;
mod idempotency;
mod intake;
mod live;
pub mod messages;
mod relay;
mod reload;
pub mod responses;
mod route;
mod usage;
mod validate;

pub use error::ApiError;
pub use relay::{
    Aggregate, AggregatedCall, AggregatedChoice, Pending, ResponseNames, SseEncoder, StreamEncoder,
};
pub use route::{estimate_input_tokens, expected_output_tokens};
pub use validate::{parse_chat, validate_chat};

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sy_bus::{Bus, BusError, ReplyRouter};
use sy_config::{Config, ModelRoute};
use sy_protocol::{
    ApiSurface, ErrorCode, FallbackTarget, ReplyFrame, RequestEnvelope, RouteChoice, StartInfo,
    header as hdr, now_unix_ms,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

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
    let app = Router::new()
        .route(
            "/v1/chat/completions",
            post(chat_completions).fallback(method_not_allowed),
        )
        .route("/v1/messages", post(messages).fallback(method_not_allowed))
        .route(
            "/v1/responses",
            post(responses).fallback(method_not_allowed),
        )
        .route(
            "/v1/embeddings",
            post(embeddings_handler).fallback(method_not_allowed),
        )
        .route(
            "/v1/route/explain",
            post(route_explain).fallback(method_not_allowed),
        )
        .route(
            "/v1/route/targets",
            get(live::targets)
                .put(live::force)
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/files",
            post(batch::api::upload)
                .get(batch::api::list_files)
                .layer(axum::extract::DefaultBodyLimit::max(file_limit))
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/files/{id}",
            get(batch::api::get_file)
                .delete(batch::api::delete_file)
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/files/{id}/content",
            get(batch::api::file_content).fallback(method_not_allowed),
        )
        .route(
            "/v1/batches",
            post(batch::api::create)
                .get(batch::api::list)
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/batches/{id}",
            get(batch::api::get).fallback(method_not_allowed),
        )
        .route(
            "/v1/batches/{id}/cancel",
            post(batch::api::cancel).fallback(method_not_allowed),
        )
        .route("/v1/models", get(list_models).fallback(method_not_allowed))
        .route("/v1/usage", get(get_usage).fallback(method_not_allowed))
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

/// The caller's key name. The key comes as `Authorization: Bearer KEY` (OpenAI
/// clients) or `x-api-key: KEY` (Anthropic clients), on every endpoint.
fn authenticate<'a>(state: &'a AppState, headers: &HeaderMap) -> Result<&'a str, ApiError> {
    let bearer = headers.get(header::AUTHORIZATION).map(|value| {
        value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .unwrap_or("")
    });
    let api_key = headers
        .get("x-api-key")
        .map(|v| v.to_str().map(str::trim).unwrap_or(""));
    let Some(token) = bearer.filter(|t| !t.is_empty()).or(api_key) else {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "You didn't provide an API key. Send it in the Authorization header as 'Bearer KEY' (or as x-api-key).",
        ));
    };
    state
        .keys
        .get(token)
        .map(String::as_str)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "Incorrect API key provided."))
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

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(header::CONTENT_TYPE) {
        // curl and many clients omit it; the body still has to be JSON.
        None => Ok(()),
        // `curl -d '{…}'` labels its JSON a form; the body still has to be
        // JSON (a real form is a 400). Browsers cannot send it cross-site with
        // a key: the Authorization header needs a CORS preflight.
        Some(v)
            if v.as_bytes()
                .get(..33)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"application/x-www-form-urlencoded")) =>
        {
            Ok(())
        }
        Some(v) => {
            let mime = v
                .to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim();
            if mime.eq_ignore_ascii_case("application/json") {
                Ok(())
            } else {
                Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!("Unsupported content type '{mime}'; send 'application/json'."),
                ))
            }
        }
    }
}

/// Bytes of an oversized body read and discarded before answering 413, so the
/// client (still uploading) reads the answer instead of a connection reset.
/// Larger bodies are cut off: the connection closes after the 413.
const DRAIN_CAP: usize = 16 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Refuses a compressed body (415): decoding one would let a few kilobytes on
/// the wire become gigabytes in memory, and no client of these APIs needs it.
fn check_encoding(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(header::CONTENT_ENCODING) {
        None => Ok(()),
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"identity") => Ok(()),
        Some(v) => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "Content-Encoding '{}' is not supported; send the body uncompressed.",
                sy_protocol::bounded(&String::from_utf8_lossy(v.as_bytes()), 32)
            ),
        )),
    }
}

async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    check_encoding(headers)?;
    let limit = state.max_body_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("The request body is larger than the {limit} bytes this server accepts."),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = body;
    let mut buf =
        bytes::BytesMut::with_capacity(declared.map_or(8192, |n| n.min(limit as u64) as usize));
    let mut over = declared.is_some_and(|n| n > limit as u64);
    let mut seen = 0usize;
    let drain_until = tokio::time::Instant::now() + DRAIN_TIME;
    loop {
        let frame = if over {
            match tokio::time::timeout_at(drain_until, body.frame()).await {
                Ok(f) => f,
                Err(_) => break,
            }
        } else {
            body.frame().await
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| match intake::BodyRefused::find(&e) {
            Some(refused) => refused.api_error(),
            None => ApiError::new(
                ErrorCode::InvalidRequest,
                "The request body could not be read.",
            ),
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if over {
            if seen > DRAIN_CAP {
                break;
            }
        } else if seen > limit {
            over = true;
            buf = bytes::BytesMut::new();
        } else {
            buf.extend_from_slice(&data);
        }
    }
    if over {
        Err(too_large())
    } else {
        Ok(buf.freeze())
    }
}

fn resolve<'a>(routing: &'a reload::Routing, model: &str) -> Result<&'a ModelRoute, ApiError> {
    routing.models.get(model).ok_or_else(|| ApiError {
        param: Some("model".into()),
        ..ApiError::new(
            ErrorCode::ModelNotFound,
            format!("The model '{model}' does not exist or you do not have access to it."),
        )
    })
}

fn with_headers(
    mut resp: Response,
    request_id: Uuid,
    start: Option<&StartInfo>,
    class: Option<sy_classifier::Class>,
) -> Response {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id.to_string()) {
        h.insert(hdr::REQUEST_ID, v);
    }
    if let Some(c) = class {
        h.insert(hdr::CLASS, HeaderValue::from_static(c.as_str()));
    }
    if let Some(s) = start {
        if let Ok(v) = HeaderValue::from_str(&s.provider) {
            h.insert(hdr::PROVIDER, v);
        }
        if let Ok(v) = HeaderValue::from_str(&s.model) {
            h.insert(hdr::MODEL, v);
        }
        h.insert(hdr::ATTEMPTS, HeaderValue::from(s.attempt));
    }
    resp
}

fn start_of(frame: &ReplyFrame) -> Option<&StartInfo> {
    match frame {
        ReplyFrame::Chunk(c) => c.start.as_ref(),
        ReplyFrame::Embedding(e) => e.start.as_ref(),
        ReplyFrame::Final(f) => f.start.as_ref(),
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
    req: Request,
) -> Response {
    let request_id = Uuid::now_v7();
    let (parts, body) = req.into_parts();
    let result = async {
        check_content_type(&parts.headers)?;
        let body = read_body(&state, &parts.headers, body).await?;
        let request = parse_request(ApiSurface::ChatCompletions, &body)?;
        let prediction = classify::decide(&state.classifier, &parts.headers, &request)?;
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
    let request_id = Uuid::now_v7();
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

/// Parses and validates a body of `surface` into the canonical request.
fn parse_request(
    surface: ApiSurface,
    body: &[u8],
) -> Result<sy_protocol::chat::ChatRequest, ApiError> {
    validate::check_depth(body)?;
    let request = match surface {
        ApiSurface::Messages => messages::parse(body)?,
        ApiSurface::Responses => responses::parse(body)?,
        _ => parse_chat(body)?,
    };
    validate_chat(&request)?;
    Ok(request)
}

async fn chat(
    state: &Arc<AppState>,
    surface: ApiSurface,
    request_id: Uuid,
    req: Request,
) -> Result<Response, ChatError> {
    let received_unix_ms = now_unix_ms();
    let (parts, body) = req.into_parts();
    let key_id = authenticate(state, &parts.headers).map_err(|e| (e, None, None))?;
    check_content_type(&parts.headers).map_err(|e| (e, None, None))?;
    let body = read_body(state, &parts.headers, body)
        .await
        .map_err(|e| (e, None, None))?;
    let prepared = prepare(
        state,
        surface,
        &parts.headers,
        &body,
        Origin {
            request_id,
            key_id,
            received_unix_ms,
            deadline_unix_ms: received_unix_ms + state.request_timeout.as_millis() as u64,
            batch: None,
        },
    )
    .map_err(|(e, class)| (e, None, class))?;
    let Prepared {
        envelope,
        class,
        route_header,
        base64,
    } = prepared;
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

/// Where a request comes from: the HTTP client, or a batch's dispatcher.
pub(crate) struct Origin<'a> {
    pub request_id: Uuid,
    pub key_id: &'a str,
    pub received_unix_ms: u64,
    pub deadline_unix_ms: u64,
    /// Set for a batch item: routed the same way, but not shed (it waits in
    /// its own queue) and answered on the batch's result subject.
    pub batch: Option<sy_protocol::batch::BatchItem>,
}

/// A request parsed, validated, classified and routed, ready to publish.
pub(crate) struct Prepared {
    pub envelope: RequestEnvelope,
    pub class: Option<sy_classifier::Class>,
    pub route_header: String,
    /// Embeddings answered as base64.
    pub base64: bool,
}

/// Parses, validates, classifies and routes a body of `surface`: everything the
/// ingress does before it publishes, shared with the batch dispatcher.
pub(crate) fn prepare(
    state: &AppState,
    surface: ApiSurface,
    headers: &HeaderMap,
    body: &[u8],
    origin: Origin<'_>,
) -> Result<Prepared, (ApiError, Option<sy_classifier::Class>)> {
    let Origin {
        request_id,
        key_id,
        received_unix_ms,
        deadline_unix_ms,
        batch,
    } = origin;
    let (request, embeddings) = if surface == ApiSurface::Embeddings {
        validate::check_depth(body).map_err(|e| (e, None))?;
        let e = embeddings::parse(body).map_err(|e| (e, None))?;
        (
            sy_protocol::chat::ChatRequest::model_only(&e.model),
            Some(e),
        )
    } else {
        (parse_request(surface, body).map_err(|e| (e, None))?, None)
    };
    let base64 = embeddings
        .as_ref()
        .is_some_and(|e| e.encoding_format.as_deref() == Some("base64"));
    let class = if embeddings.is_some() {
        None
    } else {
        Some(
            classify::decide(&state.classifier, headers, &request)
                .map_err(|e| (e, None))?
                .class,
        )
    };
    let routing = state.routing();
    let (route_name, provider, model, route_header, choice, fallback, policy) =
        match routing.routers.get(&request.model) {
            Some(router) => {
                let Some(c) = class else {
                    return Err((
                        ApiError::invalid(
                            "model",
                            format!(
                                "'{}' routes chat requests; name an embedding model.",
                                request.model
                            ),
                        ),
                        None,
                    ));
                };
                let decision = route::decide(state, router, &request, c, request_id);
                let Some(chosen) = decision.chosen() else {
                    let why: Vec<String> = decision
                        .candidates
                        .iter()
                        .map(|c| {
                            format!(
                                "{}/{}: {}",
                                c.provider,
                                c.model,
                                c.skipped.as_deref().unwrap_or("?")
                            )
                        })
                        .collect();
                    return Err((
                        ApiError {
                            retry_after_secs: Some(1),
                            ..ApiError::new(
                                ErrorCode::Overloaded,
                                format!(
                                    "No target of route '{}' can serve this request now ({}).",
                                    decision.route,
                                    why.join("; ")
                                ),
                            )
                        },
                        class,
                    ));
                };
                let choice = RouteChoice {
                    route: decision.route.clone(),
                    strategy: decision.strategy.to_owned(),
                    rank: decision.order.first().map_or(1, |i| *i as u32 + 1),
                };
                let fallback = decision.order[1..]
                    .iter()
                    .map(|&i| FallbackTarget {
                        provider: decision.candidates[i].provider.clone(),
                        model: decision.candidates[i].model.clone(),
                        rank: i as u32 + 1,
                    })
                    .collect();
                (
                    router.name.clone(),
                    chosen.provider.clone(),
                    chosen.model.clone(),
                    decision.route.clone(),
                    choice,
                    fallback,
                    router.policy,
                )
            }
            None => {
                let route = resolve(&routing, &request.model).map_err(|e| (e, class))?;
                let mut order = route::fixed_order(state, route);
                let first = order.remove(0);
                let choice = RouteChoice {
                    route: String::new(),
                    strategy: "fixed".into(),
                    rank: first.rank,
                };
                (
                    route.name.clone(),
                    first.provider,
                    first.model,
                    route.name.clone(),
                    choice,
                    order,
                    route.policy,
                )
            }
        };
    let targets: Vec<FallbackTarget> = std::iter::once(FallbackTarget {
        provider,
        model,
        rank: choice.rank,
    })
    .chain(fallback)
    .collect();
    // Load shedding: skip targets whose queue is full or too slow for the
    // deadline. (Batch items wait in their own queue and are not shed.)
    let (first, fallback) = if batch.is_some() {
        let mut targets = targets.into_iter();
        let Some(first) = targets.next() else {
            return Err((
                ApiError::new(ErrorCode::Internal, "a route without targets"),
                class,
            ));
        };
        (first, targets.collect())
    } else {
        route::shed(state, targets).map_err(|e| (e, class))?
    };
    let (provider, model) = (first.provider, first.model);
    let choice = RouteChoice {
        rank: first.rank,
        ..choice
    };
    let reply_to = match &batch {
        Some(_) => String::new(),
        None => state.bus.subjects().reply(&state.ingress_id, request_id),
    };
    let envelope = RequestEnvelope {
        request_id,
        attempt: 1,
        ingress_id: state.ingress_id.clone(),
        reply_to,
        received_unix_ms,
        deadline_unix_ms,
        key_id: key_id.to_owned(),
        api: surface,
        route: route_name,
        provider,
        model,
        request,
        embeddings,
        class: class.map(|c| c.as_str().to_owned()),
        choice: Some(choice),
        fallback,
        fallback_reason: None,
        mid_stream: policy.mid_stream,
        resume: None,
        fallback_on_refusal: policy.fallback_on_refusal,
        watchdogs: policy.watchdogs,
        batch,
    };
    Ok(Prepared {
        envelope,
        class,
        route_header,
        base64,
    })
}

async fn json_response(
    surface: ApiSurface,
    mut pending: Pending,
    first: ReplyFrame,
    names: &ResponseNames,
    base64: bool,
) -> Result<Response, ApiError> {
    let mut frames = vec![first];
    while !matches!(frames.last(), Some(ReplyFrame::Final(_))) {
        frames.push(pending.next().await?);
    }
    let body = answer_body(surface, frames, names, base64)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// The JSON body a client that did not stream gets for an answer's frames
/// (ending with the final frame), or the error the final frame carries.
pub(crate) fn answer_body(
    surface: ApiSurface,
    frames: Vec<ReplyFrame>,
    names: &ResponseNames,
    base64: bool,
) -> Result<Vec<u8>, ApiError> {
    let mut agg = Aggregate::default();
    let mut vectors = Vec::new();
    let mut end = None;
    for frame in frames {
        match frame {
            ReplyFrame::Chunk(c) => agg.add(c.choices),
            ReplyFrame::Embedding(e) => vectors.push(e),
            ReplyFrame::Final(f) => {
                if let Some(e) = &f.error {
                    return Err(ApiError::from_frame(e));
                }
                end = Some((f.usage, f.finish_reason));
                break;
            }
        }
    }
    let Some((usage, finish)) = end else {
        return Err(ApiError::new(
            ErrorCode::Internal,
            "the answer ended without its final frame",
        ));
    };
    let first_choice = |agg: Aggregate| {
        let mut choice = agg.into_first();
        if let Some(c) = &mut choice
            && c.finish_reason.is_none()
        {
            c.finish_reason = finish;
        }
        choice
    };
    Ok(match surface {
        ApiSurface::Messages => messages::body(first_choice(agg), names, usage.as_ref()),
        ApiSurface::Responses => responses::body(first_choice(agg), names, usage.as_ref()),
        ApiSurface::Embeddings => embeddings::body(vectors, base64, names, usage.as_ref()),
        _ => agg.into_body(names, usage.as_ref()),
    })
}

struct SseState<E> {
    pending: Pending,
    encoder: E,
    first: Option<ReplyFrame>,
    done: bool,
}

fn sse_response<E: StreamEncoder>(pending: Pending, first: ReplyFrame, encoder: E) -> Response {
    let state = SseState {
        pending,
        encoder,
        first: Some(first),
        done: false,
    };
    let events = futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let frame = match st.first.take() {
            Some(f) => Ok(f),
            None => st.pending.next().await,
        };
        let bytes = match frame {
            Ok(ReplyFrame::Chunk(c)) => {
                if let Some(start) = &c.start {
                    // The first frame's names are the encoder's already; a
                    // later start is a fallback continuing the stream.
                    st.encoder.continued_by(start);
                }
                st.encoder.chunk(&c.choices)
            }
            // Never in a chat stream.
            Ok(ReplyFrame::Embedding(_)) => Bytes::new(),
            Ok(ReplyFrame::Final(f)) => {
                st.done = true;
                match &f.error {
                    Some(e) => st.encoder.error(&ApiError::from_frame(e)),
                    None => st
                        .encoder
                        .finish(f.finish_reason.as_deref(), f.usage.as_ref()),
                }
            }
            Err(e) => {
                st.done = true;
                st.encoder.error(&e)
            }
        };
        Some((Ok::<_, Infallible>(bytes), st))
    });
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(events),
    )
        .into_response()
}
