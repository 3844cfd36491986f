//! What the Files and Batches endpoints (`surface::files`, `surface::batches`)
//! share: the stores, their errors in the client's format, and the owner check
//! (another key's file or batch is 404, as if it did not exist).

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sy_protocol::ErrorCode;
use sy_protocol::batch::BatchRecord;

use super::{FileObject, Stores};
use crate::error::ApiError;
use crate::state::AppState;

pub(crate) fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        serde_json::to_vec(value).unwrap_or_default(),
    )
        .into_response()
}

pub(crate) fn stores(state: &AppState) -> Result<&Arc<Stores>, ApiError> {
    state.batches.as_ref().ok_or_else(|| ApiError {
        retry_after_secs: Some(5),
        ..ApiError::new(
            ErrorCode::BusUnavailable,
            "Batch storage is not available (NATS JetStream refused to create it).",
        )
    })
}

pub(crate) fn storage_error(e: String) -> ApiError {
    tracing::warn!(error = %e, "Batch storage failed.");
    ApiError {
        retry_after_secs: Some(1),
        ..ApiError::new(
            ErrorCode::BusUnavailable,
            "Batch storage is unavailable; retry shortly.",
        )
    }
}

pub(crate) fn no_such(kind: &str, id: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("No such {kind}: {id}"))
}

/// A multipart read that failed: the body's refusal (too slow, no room),
/// else a 400 naming `what`.
pub(crate) fn unreadable(e: &axum::extract::multipart::MultipartError, what: &str) -> ApiError {
    match crate::intake::BodyRefused::find(e) {
        Some(refused) => refused.api_error(),
        None => ApiError::new(
            ErrorCode::InvalidRequest,
            format!("{what} could not be read: {e}"),
        ),
    }
}

/// A file of `owner`'s (a project, or a file key), or 404 (whether it does
/// not exist or is another owner's).
pub(crate) async fn owned_file(
    state: &AppState,
    id: &str,
    owner: &str,
) -> Result<FileObject, ApiError> {
    stores(state)?
        .file(id, owner)
        .await
        .map_err(storage_error)?
        .ok_or_else(|| no_such("File", id))
}

/// A batch of `owner`'s and its revision, or 404.
pub(crate) async fn owned(
    state: &AppState,
    id: &str,
    owner: &str,
) -> Result<(BatchRecord, u64), ApiError> {
    stores(state)?
        .record(id)
        .await
        .map_err(storage_error)?
        .filter(|(r, _)| r.owner() == owner)
        .ok_or_else(|| no_such("Batch", id))
}
