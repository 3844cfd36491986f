//! The ingress's metrics (issue 19): every answer counted by route, status
//! class and error type, and the time to its headers, by a middleware around
//! the whole router; `GET /metrics` renders the process's registry
//! (`sy_telemetry::metrics`), behind `[metrics] token` when one is set.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sy_protocol::ErrorCode;
use sy_telemetry::{metrics, trace};

use crate::state::AppState;

/// The path the metrics are served on.
pub const PATH: &str = "/metrics";

/// Counts the answer and times its headers. The route label is the matched
/// route's template (an unknown path is `unmatched`), so no path a client
/// invents adds a series.
///
/// With tracing on, it also opens the request's `SERVER` span (continuing a
/// client's `traceparent`), hands it to the handler as a request extension,
/// and ends it with the answer's body.
pub(crate) async fn observe(mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let started = Instant::now();
    if req.headers().contains_key(sy_protocol::header::TIMING) {
        // Where the time went starts here, the first layer of the router.
        req.extensions_mut().insert(crate::stages::Arrived(started));
    }
    let span = if trace::enabled() && !UNTRACED.contains(&route.as_str()) {
        let parent = req
            .headers()
            .get(trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok());
        let span = trace::Span::server(req.method().as_str(), &route, parent);
        req.extensions_mut().insert(span.clone());
        span
    } else {
        trace::Span::off()
    };
    let resp = next.run(req).await;
    if route == PATH {
        return resp;
    }
    let status = resp.status();
    let error_type = match resp.extensions().get::<ErrorCode>() {
        Some(code) => code.error_type(),
        None if status.is_client_error() => "caller",
        None if status.is_server_error() => "internal",
        None => "none",
    };
    let resp = if span.is_on() {
        span.set_i64("http.response.status_code", i64::from(status.as_u16()));
        // HTTP conventions: a 4xx is the caller's, not the server span's
        // failure (its error.type says which); a 5xx fails the span.
        if status.is_server_error() {
            span.fail(error_type);
        } else if status.is_client_error() {
            span.set("error.type", error_type);
        }
        // The span ends when the body does: a stream's last event, or the
        // client going away.
        resp.map(|body| axum::body::Body::new(SpanBody { body, _span: span }))
    } else {
        resp
    };
    let m = metrics::get();
    m.requests
        .get_or_create(&[
            ("route", route.clone()),
            ("status", metrics::status_class(status.as_u16()).to_owned()),
            ("error_type", error_type.to_owned()),
        ])
        .inc();
    m.response_start
        .get_or_create(&[("route", route)])
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Routes that open no span: probes and scrapes.
const UNTRACED: [&str; 3] = [PATH, "/healthz", "/readyz"];

/// A response body that holds its request's span until it is dropped.
struct SpanBody {
    body: axum::body::Body,
    _span: trace::Span,
}

impl http_body::Body for SpanBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// `GET /metrics`: the Prometheus text, with the live routing state (each
/// configured provider's queue while its reading is fresh, each target's
/// breaker) read as it is scraped.
pub(crate) async fn serve(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let token = state.metrics_token.as_ref().map(|t| t.expose());
    if let Some(refused) = refuse(token, req.headers()) {
        return refused;
    }
    let m = metrics::get();
    let now = sy_protocol::now_unix_ms();
    let live = state.live.snapshot(now);
    // Set afresh each time: a provider gone from the config, or whose
    // reading went stale, drops out instead of keeping its last value.
    m.queue_depth.clear();
    m.in_flight.clear();
    m.target_healthy.clear();
    let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    for p in live.providers.iter().filter(|p| {
        state.providers.contains_key(&p.provider)
            && now.saturating_sub(p.load.read_unix_ms) <= sy_router::live::LOAD_FRESH_MS
    }) {
        let provider = [("provider", p.provider.clone())];
        m.queue_depth
            .get_or_create(&provider)
            .set(gauge(p.load.queued));
        m.in_flight
            .get_or_create(&provider)
            .set(gauge(p.load.in_flight));
    }
    for t in live
        .targets
        .iter()
        .filter(|t| state.providers.contains_key(&t.provider))
    {
        m.target_healthy
            .get_or_create(&[
                ("provider", t.provider.clone()),
                ("model", metrics::model_label(&t.model)),
            ])
            .set(i64::from(t.healthy));
    }
    render(None, req.headers(), state.bus.is_connected())
}

/// The 401 for a request without `token` (when there is one).
fn refuse(token: Option<&str>, headers: &axum::http::HeaderMap) -> Option<Response> {
    let token = token?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
        return None;
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            "metrics need the [metrics] token\n",
        )
            .into_response(),
    )
}

/// The metrics as an answer to a request with `headers`: 401 unless it
/// carries `token` (when there is one). `connected` is the process's NATS
/// connection, read as it is scraped.
pub fn render(token: Option<&str>, headers: &axum::http::HeaderMap, connected: bool) -> Response {
    if let Some(refused) = refuse(token, headers) {
        return refused;
    }
    metrics::get().nats_connected.set(i64::from(connected));
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        metrics::render(),
    )
        .into_response()
}

/// Whether `a` and `b` are equal, in time that depends on their lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Serves `GET /metrics`, `GET /healthz` (the process answers) and
/// `GET /readyz` (it is connected to NATS; 503 otherwise) on `addr` for a
/// process that has no ingress (a worker, accounting, a dispatcher), until
/// `shutdown`.
pub async fn listen(
    addr: std::net::SocketAddr,
    token: Option<sy_config::Secret>,
    bus: sy_bus::Bus,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let ready_bus = bus.clone();
    let app = axum::Router::new()
        .route(
            PATH,
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let (token, connected) = (token.clone(), bus.is_connected());
                async move { render(token.as_ref().map(|t| t.expose()), &headers, connected) }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let connected = ready_bus.is_connected();
                async move {
                    if connected {
                        (StatusCode::OK, "ok\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not connected to NATS\n")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "Serving /metrics.");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
