//! `Idempotency-Key`: a retried client request gets the first one's result
//! (or 409 while that one still runs) and never reaches a provider twice.
//!
//! State lives in the NATS KV bucket `<NS>_IDEMPOTENCY` (entries expire after
//! `server.idempotency_window`), keyed by a hash of the API key's name and the
//! client's key, so every ingress replica sees the same keys and one tenant's
//! keys never meet another's. A request first *creates* its entry (atomic: only
//! one of two concurrent requests wins) as `running`; when its response has
//! been sent whole (a non-streamed body, or a stream to its end) the entry
//! becomes `done` with the status, the `content-type` and `x-switchyard-*`
//! headers and the body. Replays answer from it with `idempotent-replayed:
//! true`. A request that failed with a 5xx, or whose client went away before
//! the end, leaves no entry, so the client's retry runs again; so does a
//! `running` mark older than twice the request timeout (its ingress died).

use std::sync::Arc;

use async_nats::jetstream::kv::{CreateErrorKind, Store};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sy_protocol::{ApiSurface, ErrorCode};

use crate::error::ApiError;
use crate::intake::read_body;
use crate::state::AppState;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Set on a replayed response.
const REPLAYED: &str = "idempotent-replayed";
/// Longest client key accepted.
const MAX_KEY_CHARS: usize = 255;
/// Largest response kept for replay (a KV value must fit in one NATS message).
const MAX_STORED_BYTES: usize = 768 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Entry {
    Running {
        body_sha256: String,
        /// When it started; a mark older than twice the request timeout was
        /// left by a crashed ingress.
        started_unix_ms: u64,
    },
    Done {
        body_sha256: String,
        status: u16,
        headers: Vec<(String, String)>,
        /// Base64 of the body; none when it was too large to keep.
        body: Option<String>,
    },
}

impl Entry {
    fn body_sha256(&self) -> &str {
        match self {
            Entry::Running { body_sha256, .. } | Entry::Done { body_sha256, .. } => body_sha256,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves `req`, which carries an `Idempotency-Key`, through `run` at most once.
pub(crate) async fn serve<F, Fut>(
    state: Arc<AppState>,
    surface: ApiSurface,
    req: Request,
    run: F,
) -> Response
where
    F: FnOnce(Arc<AppState>, Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let (parts, body) = req.into_parts();
    let result: Result<Response, ApiError> = async {
        let key_id = parts
            .extensions
            .get::<crate::extract::Caller>()
            .map(|c| c.key_id.clone())
            .ok_or_else(|| {
                ApiError::new(ErrorCode::Internal, "the request was not authenticated")
            })?;
        let client_key = parts
            .headers
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.chars().count() <= MAX_KEY_CHARS)
            .ok_or_else(|| {
                ApiError::invalid(
                    HEADER,
                    format!("Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible characters."),
                )
            })?
            .to_owned();
        let Some(store) = state.idempotency.clone() else {
            return Err(ApiError::new(
                ErrorCode::BusUnavailable,
                "Idempotency keys are unavailable: the key store could not be set up.",
            ));
        };
        let body = read_body(state.max_body_bytes, &parts.headers, body).await?;
        let body_sha256 = hex(&Sha256::digest(&body));
        let key = hex(&Sha256::digest(
            format!("{key_id}\0{client_key}").as_bytes(),
        ));
        let running = Entry::Running {
            body_sha256: body_sha256.clone(),
            started_unix_ms: sy_protocol::now_unix_ms(),
        };
        let value = Bytes::from(serde_json::to_vec(&running).unwrap_or_default());
        match store.create(&key, value).await {
            Ok(_) => {}
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                let stale_after = 2 * state.request_timeout.as_millis() as u64;
                return replay(&store, &key, &body_sha256, stale_after).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Idempotency key store unavailable.");
                return Err(unavailable());
            }
        }
        let resp = run(state.clone(), Request::from_parts(parts, Body::from(body))).await;
        Ok(keep(store, key, body_sha256, resp).await)
    }
    .await;
    match result {
        Ok(r) => r,
        Err(e) => e.render(surface),
    }
}

fn unavailable() -> ApiError {
    ApiError {
        retry_after_secs: Some(1),
        ..ApiError::new(
            ErrorCode::BusUnavailable,
            "The idempotency key store is unavailable; retry shortly.",
        )
    }
}

/// The answer for a key that exists: the stored result, 409 while it runs, 422
/// for a different body.
async fn replay(
    store: &Store,
    key: &str,
    body_sha256: &str,
    stale_after_ms: u64,
) -> Result<Response, ApiError> {
    let raw = store.get(key).await.map_err(|_| unavailable())?;
    let Some(entry) = raw.and_then(|b| serde_json::from_slice::<Entry>(&b).ok()) else {
        // Deleted or expired in between: the client may simply retry.
        return Err(conflict("is being released; retry"));
    };
    if entry.body_sha256() != body_sha256 {
        return Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            param: Some(HEADER.into()),
            ..ApiError::new(
                ErrorCode::InvalidRequest,
                "This Idempotency-Key was used with a different request body.",
            )
        });
    }
    match entry {
        Entry::Running {
            started_unix_ms, ..
        } if sy_protocol::now_unix_ms().saturating_sub(started_unix_ms) > stale_after_ms => {
            // Its ingress died mid-request: release the key for the retry.
            release(store, key).await;
            Err(conflict("was abandoned by a stopped server; retry"))
        }
        Entry::Running { .. } => Err(conflict("is still running")),
        Entry::Done {
            status,
            headers,
            body,
            ..
        } => {
            let Some(body) =
                body.and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            else {
                return Err(conflict(&format!(
                    "completed with status {status}, but its response was too large to keep for replay"
                )));
            };
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            for (k, v) in headers {
                if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                    resp.headers_mut().insert(k, v);
                }
            }
            resp.headers_mut()
                .insert(REPLAYED, HeaderValue::from_static("true"));
            Ok(resp)
        }
    }
}

fn conflict(what: &str) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        retry_after_secs: Some(1),
        ..ApiError::new(
            ErrorCode::InvalidRequest,
            format!("A request with this Idempotency-Key {what}."),
        )
    }
}

/// The headers worth replaying.
fn kept_headers(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .filter(|(k, _)| {
            *k == axum::http::header::CONTENT_TYPE || k.as_str().starts_with("x-switchyard-")
        })
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

/// Passes `resp` to the client and stores it once it was sent whole; a 5xx or
/// a response the client did not read to its end releases the key instead.
async fn keep(store: Store, key: String, body_sha256: String, resp: Response) -> Response {
    let status = resp.status();
    if status.is_server_error() {
        release(&store, &key).await;
        return resp;
    }
    let headers = kept_headers(resp.headers());
    let (parts, body) = resp.into_parts();
    let mut guard = Keeper {
        store,
        key,
        body_sha256,
        status: status.as_u16(),
        headers,
        buf: Vec::new(),
        too_large: false,
        finished: false,
    };
    let mut inner = body.into_data_stream();
    let stream = async_stream_body(move |tx| async move {
        while let Some(chunk) = inner.next().await {
            match chunk {
                Ok(bytes) => {
                    guard.add(&bytes);
                    if tx.send(Ok(bytes)).await.is_err() {
                        return; // The client went away: the guard releases the key.
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        guard.finish().await;
    });
    Response::from_parts(parts, stream)
}

/// A body fed by a task, so that the task can finish work (storing the result)
/// after the last byte went out.
fn async_stream_body<F, Fut>(f: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, axum::Error>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Body::from_stream(tokio_stream_from(rx))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, axum::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, axum::Error>> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

struct Keeper {
    store: Store,
    key: String,
    body_sha256: String,
    status: u16,
    headers: Vec<(String, String)>,
    buf: Vec<u8>,
    too_large: bool,
    finished: bool,
}

impl Keeper {
    fn add(&mut self, bytes: &[u8]) {
        if self.buf.len() + bytes.len() > MAX_STORED_BYTES {
            self.too_large = true;
            self.buf = Vec::new();
        } else if !self.too_large {
            self.buf.extend_from_slice(bytes);
        }
    }

    async fn finish(&mut self) {
        self.finished = true;
        let entry = Entry::Done {
            body_sha256: std::mem::take(&mut self.body_sha256),
            status: self.status,
            headers: std::mem::take(&mut self.headers),
            body: (!self.too_large)
                .then(|| base64::engine::general_purpose::STANDARD.encode(&self.buf)),
        };
        let value = Bytes::from(serde_json::to_vec(&entry).unwrap_or_default());
        if let Err(e) = self.store.put(&self.key, value).await {
            tracing::warn!(error = %e, "Could not keep an idempotent result; a retry will run again.");
            release(&self.store, &self.key).await;
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if !self.finished {
            let (store, key) = (self.store.clone(), std::mem::take(&mut self.key));
            tokio::spawn(async move { release(&store, &key).await });
        }
    }
}

async fn release(store: &Store, key: &str) {
    if let Err(e) = store.delete(key).await {
        tracing::warn!(error = %e, "Could not release an idempotency key; it expires with the window.");
    }
}
