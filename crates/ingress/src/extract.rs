//! Every refusal in the client's API format, and the key checked first.
//!
//! [`Caller`] authenticates from the headers alone: a handler that takes it
//! before its body never reads a byte of a keyless request. [`json_errors`] is
//! the one place where error responses that are not JSON (axum's extractor
//! rejections for a bad path, query or body are plain text) become the
//! surface's error body, keeping the status and the rejection's words.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use axum::response::Response;
use sy_protocol::{ApiSurface, ErrorCode};

use crate::{ApiError, AppState, authenticate};

/// The client API a path belongs to: errors on `/v1/messages` are Anthropic's.
pub(crate) fn surface_of_path(path: &str) -> ApiSurface {
    if path.starts_with("/v1/messages") {
        ApiSurface::Messages
    } else {
        ApiSurface::ChatCompletions
    }
}

/// The authenticated caller: the key's name.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub String);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        authenticate(state, &parts.headers)
            .map(|k| Caller(k.to_owned()))
            .map_err(|e| e.render(surface_of_path(parts.uri.path())))
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
