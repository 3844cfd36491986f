//! The OpenAI Files and Batches endpoints. Every file and batch belongs to the
//! API key that created it; another key gets 404, as if it did not exist.
//!
//! - `POST /v1/files` (multipart: `purpose=batch`, `file`), `GET /v1/files`,
//!   `GET /v1/files/{id}`, `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`
//! - `POST /v1/batches`, `GET /v1/batches`, `GET /v1/batches/{id}`,
//!   `POST /v1/batches/{id}/cancel`
//!
//! Creating a batch reads and checks its whole input file first: a bad file is
//! a 400 naming its first bad line, and nothing is dispatched.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sy_protocol::ErrorCode;
use sy_protocol::batch::{
    BATCH_ENDPOINTS, BatchJob, BatchObject, BatchRecord, BatchStatus, COMPLETION_WINDOW,
};

use super::{FileObject, Stores, input, new_id, now_secs};
use crate::extract::Caller;
use crate::{ApiError, AppState};

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
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

fn stores(state: &AppState) -> Result<&Arc<Stores>, ApiError> {
    state.batches.as_ref().ok_or_else(|| ApiError {
        retry_after_secs: Some(5),
        ..ApiError::new(
            ErrorCode::BusUnavailable,
            "Batch storage is not available (NATS JetStream refused to create it).",
        )
    })
}

fn storage_error(e: String) -> ApiError {
    tracing::warn!(error = %e, "Batch storage failed.");
    ApiError {
        retry_after_secs: Some(1),
        ..ApiError::new(
            ErrorCode::BusUnavailable,
            "Batch storage is unavailable; retry shortly.",
        )
    }
}

fn no_such(kind: &str, id: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("No such {kind}: {id}"))
}

/// A multipart read that failed: the body's refusal (too slow, no room),
/// else a 400 naming `what`.
fn unreadable(e: &axum::extract::multipart::MultipartError, what: &str) -> ApiError {
    match crate::intake::BodyRefused::find(e) {
        Some(refused) => refused.api_error(),
        None => ApiError::new(
            ErrorCode::InvalidRequest,
            format!("{what} could not be read: {e}"),
        ),
    }
}

fn respond(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/files`.
pub(crate) async fn upload(
    State(state): State<Arc<AppState>>,
    Caller(key_id): Caller,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    if let Err(e) = crate::intake::check_encoding(&headers) {
        return e.into_response();
    }
    respond(upload_inner(&state, &key_id, multipart).await)
}

async fn upload_inner(
    state: &AppState,
    key_id: &str,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let stores = stores(state)?;
    let mut multipart = multipart.map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("Send the file as multipart/form-data with fields 'purpose' and 'file' ({e})."),
        )
    })?;
    let limit = stores.config.max_file_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("The file is larger than the {limit} bytes a batch input may have."),
        )
    };
    let mut purpose = None;
    let mut file: Option<(String, Vec<u8>)> = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
            Err(e) => return Err(unreadable(&e, "The multipart body")),
        };
        match field.name() {
            Some("purpose") => {
                purpose =
                    Some(field.text().await.map_err(
                        |e| match crate::intake::BodyRefused::find(&e) {
                            Some(refused) => refused.api_error(),
                            None => ApiError::invalid(
                                "purpose",
                                format!("purpose could not be read: {e}"),
                            ),
                        },
                    )?);
            }
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").to_owned();
                let mut data = Vec::new();
                let mut field = field;
                loop {
                    match field.chunk().await {
                        Ok(Some(chunk)) => {
                            if (data.len() + chunk.len()) as u64 > limit {
                                return Err(too_large());
                            }
                            data.extend_from_slice(&chunk);
                        }
                        Ok(None) => break,
                        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                            return Err(too_large());
                        }
                        Err(e) => return Err(unreadable(&e, "The file")),
                    }
                }
                file = Some((name, data));
            }
            _ => {}
        }
    }
    let purpose = purpose.ok_or_else(|| {
        ApiError::invalid(
            "purpose",
            "Missing 'purpose'; Switchyard stores files with purpose 'batch'.",
        )
    })?;
    if purpose != "batch" {
        // Echo a bounded prefix: the field is the client's, of any length.
        return Err(ApiError::invalid(
            "purpose",
            format!(
                "Unsupported purpose '{}'; Switchyard stores files with purpose 'batch'.",
                sy_protocol::bounded(&purpose, 64)
            ),
        ));
    }
    let (filename, data) = file.ok_or_else(|| ApiError::invalid("file", "Missing 'file'."))?;
    let object = FileObject::new(new_id("file-"), data.len() as u64, filename, "batch");
    stores
        .put_file(&object, key_id, &data)
        .await
        .map_err(storage_error)?;
    tracing::info!(file = %object.id, bytes = object.bytes, key = key_id, "File stored.");
    Ok(json(StatusCode::OK, &object))
}

/// `GET /v1/files`.
pub(crate) async fn list_files(
    State(state): State<Arc<AppState>>,
    Caller(key_id): Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    respond(
        async {
            let key_id = key_id.as_str();
            let stores = stores(&state)?;
            let mut list = stores
                .files
                .list()
                .await
                .map_err(|e| storage_error(e.to_string()))?;
            let mut data = Vec::new();
            use futures::StreamExt;
            while let Some(info) = list.next().await {
                let info = info.map_err(|e| storage_error(e.to_string()))?;
                if info.deleted || info.metadata.get("owner").map(String::as_str) != Some(key_id) {
                    continue;
                }
                let f = FileObject::from_info(&info);
                if params.get("purpose").is_none_or(|p| *p == f.purpose) {
                    data.push(f);
                }
            }
            data.sort_by(|a, b| b.id.cmp(&a.id));
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"object": "list", "data": data, "has_more": false}),
            ))
        }
        .await,
    )
}

/// `GET /v1/files/{id}`.
pub(crate) async fn get_file(
    State(state): State<Arc<AppState>>,
    Caller(key_id): Caller,
    Path(id): Path<String>,
) -> Response {
    respond(
        async {
            let key_id = key_id.as_str();
            let f = owned_file(&state, &id, key_id).await?;
            Ok(json(StatusCode::OK, &f))
        }
        .await,
    )
}

/// `GET /v1/files/{id}/content`.
pub(crate) async fn file_content(
    State(state): State<Arc<AppState>>,
    Caller(key_id): Caller,
    Path(id): Path<String>,
) -> Response {
    respond(
        async {
            let key_id = key_id.as_str();
            owned_file(&state, &id, key_id).await?;
            let data = stores(&state)?
                .file_content(&id)
                .await
                .map_err(storage_error)?;
            Ok((
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                )],
                Bytes::from(data),
            )
                .into_response())
        }
        .await,
    )
}

/// `DELETE /v1/files/{id}`.
pub(crate) async fn delete_file(
    State(state): State<Arc<AppState>>,
    Caller(key_id): Caller,
    Path(id): Path<String>,
) -> Response {
    respond(
        async {
            let key_id = key_id.as_str();
            owned_file(&state, &id, key_id).await?;
            stores(&state)?
                .files
                .delete(&id)
                .await
                .map_err(|e| storage_error(e.to_string()))?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"id": id, "object": "file", "deleted": true}),
            ))
        }
        .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    /// Switchyard's addition: called when the batch ends.
    #[serde(default)]
    webhook_url: Option<String>,
}

/// Checks what a batch is asked to be; shared with the native submission path.
pub(crate) fn check_job(job: &BatchJob, webhook_allow: &[ipnet::IpNet]) -> Result<(), ApiError> {
    if !BATCH_ENDPOINTS.contains(&job.endpoint.as_str()) {
        return Err(ApiError::invalid(
            "endpoint",
            format!(
                "Unsupported endpoint '{}'; batches run {}.",
                job.endpoint,
                BATCH_ENDPOINTS.join(" or ")
            ),
        ));
    }
    if job.completion_window != COMPLETION_WINDOW {
        return Err(ApiError::invalid(
            "completion_window",
            format!(
                "Unsupported completion_window '{}'; only '{COMPLETION_WINDOW}' is supported.",
                job.completion_window
            ),
        ));
    }
    if job.metadata.len() > 16
        || job
            .metadata
            .iter()
            .any(|(k, v)| k.len() > 64 || v.len() > 512)
    {
        return Err(ApiError::invalid(
            "metadata",
            "metadata holds at most 16 pairs, keys up to 64 and values up to 512 characters.",
        ));
    }
    if let Some(url) = &job.webhook_url {
        super::webhook::check_url(url, webhook_allow)
            .map_err(|e| ApiError::invalid("webhook_url", e))?;
    }
    Ok(())
}

/// `POST /v1/batches`.
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Caller(key_id): Caller,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    respond(
        async {
            // The key was checked before a byte of the body was read.
            let key_id = key_id.as_str();
            crate::intake::check_content_type(&headers)?;
            let body = crate::intake::read_body(&state, &headers, body).await?;
            let stores = stores(&state)?;
            let req: CreateBatch = serde_json::from_slice(&body).map_err(|e| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("The request body is not a valid batch: {e}"),
                )
            })?;
            let job = BatchJob {
                id: Some(new_id("batch_")),
                key_id: key_id.to_owned(),
                endpoint: req.endpoint,
                completion_window: req.completion_window,
                metadata: req.metadata.unwrap_or_default(),
                input_file_id: Some(req.input_file_id.clone()),
                requests: Vec::new(),
                webhook_url: req.webhook_url,
            };
            check_job(&job, &stores.config.webhook_allow)?;
            let file = owned_file(&state, &req.input_file_id, key_id)
                .await
                .map_err(|e| ApiError {
                    param: Some("input_file_id".into()),
                    ..e
                })?;
            if file.purpose != "batch" {
                return Err(ApiError::invalid(
                    "input_file_id",
                    format!(
                        "File {} has purpose '{}', not 'batch'.",
                        file.id, file.purpose
                    ),
                ));
            }
            let data = stores.file_content(&file.id).await.map_err(storage_error)?;
            let lines =
                input::parse(&data, &job.endpoint, stores.config.max_lines).map_err(|e| {
                    ApiError {
                        param: e.param.clone(),
                        ..ApiError::new(
                            ErrorCode::InvalidRequest,
                            format!("Invalid input file {}: {} [{}]", file.id, e.message, e.code),
                        )
                    }
                })?;
            let id = job.id.clone().unwrap_or_default();
            let mut batch = BatchObject::new(id.clone(), &job, file.id.clone(), now_secs());
            batch.request_counts.total = lines.len() as u64;
            let record = BatchRecord {
                batch,
                key_id: key_id.to_owned(),
                webhook_url: job.webhook_url.clone(),
                runner: None,
                announced: false,
            };
            stores.create(&record).await.map_err(storage_error)?;
            if let Err(e) = state.bus.publish_batch_job(&job, &id).await {
                // Not submitted: the batch must not linger as if it were.
                let _ = stores.records.purge(&id).await;
                return Err(storage_error(e.to_string()));
            }
            tracing::info!(batch = %id, items = lines.len(), key = key_id, "Batch created.");
            Ok(json(StatusCode::OK, &record.batch))
        }
        .await,
    )
}

/// `GET /v1/batches/{id}`.
pub(crate) async fn get(
    State(state): State<Arc<AppState>>,
    Caller(key_id): Caller,
    Path(id): Path<String>,
) -> Response {
    respond(
        async {
            let key_id = key_id.as_str();
            let (record, _) = owned(&state, &id, key_id).await?;
            Ok(json(StatusCode::OK, &record.batch))
        }
        .await,
    )
}

/// A file of `key_id`'s, or 404 (whether it does not exist or is another key's).
async fn owned_file(state: &AppState, id: &str, key_id: &str) -> Result<FileObject, ApiError> {
    stores(state)?
        .file(id, key_id)
        .await
        .map_err(storage_error)?
        .ok_or_else(|| no_such("File", id))
}

/// A batch of `key_id`'s and its revision, or 404.
async fn owned(state: &AppState, id: &str, key_id: &str) -> Result<(BatchRecord, u64), ApiError> {
    stores(state)?
        .record(id)
        .await
        .map_err(storage_error)?
        .filter(|(r, _)| r.key_id == key_id)
        .ok_or_else(|| no_such("Batch", id))
}

/// `GET /v1/batches?limit=&after=`: newest first.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Caller(key_id): Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    respond(
        async {
            let key_id = key_id.as_str();
            let stores = stores(&state)?;
            let limit = match params.get("limit") {
                None => 20,
                Some(l) => l
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=100).contains(l))
                    .ok_or_else(|| ApiError::invalid("limit", "limit must be 1 to 100."))?,
            };
            use futures::StreamExt;
            let mut keys: Vec<String> = stores
                .records
                .keys()
                .await
                .map_err(|e| storage_error(e.to_string()))?
                .filter_map(|k| async move { k.ok() })
                .collect()
                .await;
            // Ids are time-ordered: newest first.
            keys.sort_by(|a, b| b.cmp(a));
            if let Some(after) = params.get("after") {
                keys.retain(|k| k.as_str() < after.as_str());
            }
            let mut data = Vec::new();
            let mut has_more = false;
            for k in keys {
                let Some((r, _)) = stores.record(&k).await.map_err(storage_error)? else {
                    continue;
                };
                if r.key_id != key_id {
                    continue;
                }
                if data.len() == limit {
                    has_more = true;
                    break;
                }
                data.push(r.batch);
            }
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({
                    "object": "list",
                    "data": data,
                    "first_id": data.first().map(|b| b.id.clone()),
                    "last_id": data.last().map(|b| b.id.clone()),
                    "has_more": has_more,
                }),
            ))
        }
        .await,
    )
}

/// `POST /v1/batches/{id}/cancel`: stops dispatching and cancels the items in flight;
/// the batch ends `cancelled` with partial files.
pub(crate) async fn cancel(
    State(state): State<Arc<AppState>>,
    Caller(key_id): Caller,
    Path(id): Path<String>,
) -> Response {
    respond(
        async {
            let key_id = key_id.as_str();
            let stores = stores(&state)?;
            for _ in 0..20 {
                let (mut record, revision) = owned(&state, &id, key_id).await?;
                match record.batch.status {
                    BatchStatus::Validating | BatchStatus::InProgress => {}
                    BatchStatus::Cancelling | BatchStatus::Cancelled => {
                        return Ok(json(StatusCode::OK, &record.batch));
                    }
                    other => {
                        return Err(ApiError {
                            status: StatusCode::CONFLICT,
                            ..ApiError::new(
                                ErrorCode::InvalidRequest,
                                format!(
                                    "Batch {id} is {}; it can no longer be cancelled.",
                                    other.as_str()
                                ),
                            )
                        });
                    }
                }
                record.batch.set_status(BatchStatus::Cancelling, now_secs());
                if stores
                    .save(&record, revision)
                    .await
                    .map_err(storage_error)?
                    .is_some()
                {
                    tracing::info!(batch = %id, "Batch cancel asked.");
                    return Ok(json(StatusCode::OK, &record.batch));
                }
                // The dispatcher wrote progress meanwhile: read again.
            }
            Err(storage_error("the batch record kept changing".into()))
        }
        .await,
    )
}
