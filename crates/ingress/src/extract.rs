//! Every refusal in the client's API format, and the key checked first.
//!
//! [`identify`] runs before every `/v1` handler (a method route layer, so a
//! wrong method still gets 405): it gives the request its id and checks the
//! key from the headers alone, so no handler reads a byte of a keyless
//! request. Handlers take the result as [`Caller`] (and [`RequestId`]). [`json_errors`] is
//! the one place where error responses that are not JSON (axum's extractor
//! rejections for a bad path, query or body are plain text) become the
//! surface's error body, keeping the status and the rejection's words.

use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;
use sy_control::key::KeyError;
use sy_control::keytable::{Grant, Refused};
use sy_protocol::{ApiSurface, ErrorCode, now_unix_ms};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// The client API a path belongs to: errors on `/v1/messages` are
/// Anthropic's, on `/v1/rerank` and `/v2/rerank` Cohere's.
pub(crate) fn surface_of_path(path: &str) -> ApiSurface {
    if path.starts_with("/v1/messages") {
        ApiSurface::Messages
    } else if path == "/v1/rerank" || path == "/v2/rerank" {
        ApiSurface::Rerank
    } else {
        ApiSurface::ChatCompletions
    }
}

/// The authenticated caller: a tenant's key (its grant says whose it is and
/// what it may do), or a development key from the config file.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The key's id (a UUID) for a tenant's key, its name for a file key:
    /// what usage rows, files and batches are recorded under.
    pub key_id: String,
    /// A tenant's key's owner and scope; none for a file key (any model).
    pub grant: Option<Arc<Grant>>,
}

impl Caller {
    /// Who the caller's files and batches belong to: a tenant key's project
    /// (every key of the project shares them), or a file key's name.
    pub(crate) fn owner(&self) -> String {
        match &self.grant {
            Some(g) => format!("project:{}", g.owner.project_id),
            None => self.key_id.clone(),
        }
    }

    /// Whether the caller may name `model`; a 403 naming the scope if not.
    pub(crate) fn may_use(&self, model: &str) -> Result<(), ApiError> {
        match &self.grant {
            Some(g) if !g.allows_model(model) => {
                let allowed = g.models.as_deref().unwrap_or_default().join(", ");
                Err(ApiError {
                    param: Some("model".into()),
                    ..ApiError::new(
                        ErrorCode::PermissionDenied,
                        format!(
                            "This API key may not use model '{model}': its scope allows only [{allowed}]."
                        ),
                    )
                })
            }
            _ => Ok(()),
        }
    }
}

/// The request's id, given by [`identify`] (UUIDv7): in every usage row, log
/// line and `x-switchyard-request-id` header of the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestId(pub Uuid);

/// Gives the request its id and authenticates it; a request without a valid
/// key gets 401 in its surface's format, with the id, and goes no further.
pub(crate) async fn identify(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let arrived = req.extensions().get::<crate::stages::Arrived>().copied();
    let mut stages = crate::stages::Stages::asked(req.headers(), arrived);
    let request_id = Uuid::now_v7();
    req.extensions_mut().insert(RequestId(request_id));
    // The client's address, as the connection came (set by `intake::serve`).
    let peer = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|p| p.0.ip());
    match authenticate(&state, req.headers()).and_then(|c| from_allowed_network(c, peer)) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            if let Some(mut s) = stages.take() {
                s.mark("auth");
                req.extensions_mut().insert(s);
            }
            next.run(req).await
        }
        Err(e) => {
            let mut resp = e.render(surface_of_path(req.uri().path()));
            if let Ok(v) = HeaderValue::from_str(&request_id.to_string()) {
                resp.headers_mut()
                    .insert(sy_protocol::header::REQUEST_ID, v);
            }
            resp
        }
    }
}

/// The caller, if its key may be used from `peer`: a key with allowed
/// networks is refused (403) from any other address, and when the address is
/// unknown.
fn from_allowed_network(caller: Caller, peer: Option<IpAddr>) -> Result<Caller, ApiError> {
    match (&caller.grant, peer) {
        (Some(g), _) if g.allowed_cidrs.is_empty() => Ok(caller),
        (Some(g), Some(ip)) if g.allows_addr(ip) => Ok(caller),
        (Some(_), _) => Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!(
                "This API key may not be used from {}: it is limited to its allowed networks.",
                peer.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string())
            ),
        )),
        (None, _) => Ok(caller),
    }
}

/// The caller. The key comes as `Authorization: Bearer KEY` (OpenAI clients)
/// or `x-api-key: KEY` (Anthropic clients), on every endpoint; a key from the
/// config file is looked up first, then the tenants' table (memory only).
fn authenticate(state: &AppState, headers: &axum::http::HeaderMap) -> Result<Caller, ApiError> {
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
    if let Some(name) = state.keys.get(token) {
        return Ok(Caller {
            key_id: name.clone(),
            grant: None,
        });
    }
    // Only a refused token is checked for being an admin token: the hot
    // path (a file key, a tenant's key) pays nothing for it.
    let refused = |e: ApiError| {
        let admin_token = token.starts_with("sy_admin_")
            || state
                .admin
                .as_ref()
                .is_some_and(|a| a.is_admin_token(token));
        if admin_token {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "This is an admin token: it works on /admin/v1 only. Send an API key.",
            )
        } else {
            e
        }
    };
    let incorrect = || ApiError::new(ErrorCode::Unauthenticated, "Incorrect API key provided.");
    let Some(tenants) = &state.tenants else {
        return Err(refused(incorrect()));
    };
    let now_ms = i64::try_from(now_unix_ms()).unwrap_or(i64::MAX);
    match tenants.authenticate(token, now_ms) {
        Ok(grant) => Ok(Caller {
            key_id: grant.owner.key_id.to_string(),
            grant: Some(grant),
        }),
        Err(Refused::Unknown | Refused::Malformed(KeyError::Malformed)) => {
            Err(refused(incorrect()))
        }
        // A checksum miss is a typo (or a made-up key); an expired key, expired.
        Err(why) => Err(refused(ApiError::new(
            ErrorCode::Unauthenticated,
            format!("Incorrect API key provided: {why}."),
        ))),
    }
}

/// What a handler outside [`identify`] gets: a bug, never a client's fault.
fn not_identified() -> Response {
    ApiError::new(ErrorCode::Internal, "the request was not authenticated").into_response()
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(not_identified)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<RequestId>()
            .copied()
            .ok_or_else(not_identified)
    }
}

/// The most of a plain-text error body kept as the JSON error's message (it
/// may quote the client's input).
const MESSAGE_CAP: usize = 512;

/// Turns an error response whose body is not JSON (nor an event stream) into
/// the surface's JSON error with the same status and headers; every other
/// response passes untouched.
pub(crate) async fn json_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let surface = surface_of_path(req.uri().path());
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let typed = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/event-stream"));
    if typed {
        return resp;
    }
    let code = match status.as_u16() {
        401 => ErrorCode::Unauthenticated,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        413 => ErrorCode::PayloadTooLarge,
        415 => ErrorCode::UnsupportedMediaType,
        429 => ErrorCode::RateLimited,
        503 => ErrorCode::BusUnavailable,
        500.. => ErrorCode::Internal,
        _ => ErrorCode::InvalidRequest,
    };
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MESSAGE_CAP * 4)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        sy_protocol::bounded(&text, MESSAGE_CAP).into_owned()
    };
    let mut out = ApiError::new(code, message).render(surface);
    // Keep what the response says beyond its body (Retry-After, Allow).
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    *out.status_mut() = parts.status;
    out
}
