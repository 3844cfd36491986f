//! Extractors whose every rejection is an error in the client's API format.
//!
//! axum's own extractors answer a bad path, query or body with a plain-text
//! body; these wrap them so that each refusal is an [`ApiError`], and
//! [`Caller`] authenticates from the headers alone, so a handler that takes it
//! before its body never reads a byte of a keyless request.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
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

/// A path parameter; an unreadable one (bad percent-encoding, not UTF-8) is a
/// 400 in JSON.
#[derive(Debug)]
pub(crate) struct JsonPath<T>(pub T);

impl<T, S> FromRequestParts<S> for JsonPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(JsonPath(v)),
            Err(e) => Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("The URL path could not be read: {}", e.body_text()),
            )
            .render(surface_of_path(parts.uri.path()))),
        }
    }
}

/// A query string; an unreadable one is a 400 in JSON.
#[derive(Debug)]
pub(crate) struct JsonQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for JsonQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(JsonQuery(v)),
            Err(e) => Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("The query string could not be read: {}", e.body_text()),
            )
            .render(surface_of_path(parts.uri.path()))),
        }
    }
}

/// Last line of defence: an error response with a plain-text (or no) body,
/// from anything below the handlers, becomes an error in the client's format.
pub(crate) async fn json_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let surface = surface_of_path(req.uri().path());
    let resp = next.run(req).await;
    let status = resp.status();
    let json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/event-stream"));
    if !(status.is_client_error() || status.is_server_error()) || json {
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
    let reason = status.canonical_reason().unwrap_or("error");
    let mut out = ApiError::new(
        code,
        format!("The request was refused ({status} {reason})."),
    )
    .render(surface);
    // Keep what the status says beyond the body (Retry-After, Allow).
    for (name, value) in resp.headers() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    *out.status_mut() = status;
    out.into_response()
}
