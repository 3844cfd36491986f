//! The OpenAI Batches API: `POST /v1/batches`, `GET /v1/batches`,
//! `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`. Every batch belongs
//! to the API key that created it; another key gets 404. Creating a batch reads
//! and checks its whole input file first: a bad file is a 400 naming its first
//! bad line, and nothing is dispatched (the batch dispatcher, `batch::dispatch`,
//! runs it).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use sy_protocol::ErrorCode;
use sy_protocol::batch::{BatchJob, BatchObject, BatchRecord, BatchStatus};

use crate::batch::http::{json, owned, owned_file, storage_error, stores};
use crate::batch::{input, new_id, now_secs};
use crate::error::ApiError;
use crate::extract::Caller;
use crate::state::AppState;

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

/// `POST /v1/batches`.
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    // The key was checked before a byte of the body was read.
    let owner = caller.owner();
    let key_id = caller.key_id.as_str();
    crate::intake::check_content_type(&headers)?;
    let body = crate::intake::read_body(state.max_body_bytes, &headers, body).await?;
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
    crate::batch::check_job(&job, &stores.config.webhook_allow)?;
    let file = owned_file(&state, &req.input_file_id, &owner)
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
        input::parse(&data, &job.endpoint, stores.config.max_lines).map_err(|e| ApiError {
            param: e.param.clone(),
            ..ApiError::new(
                ErrorCode::InvalidRequest,
                format!("Invalid input file {}: {} [{}]", file.id, e.message, e.code),
            )
        })?;
    let id = job.id.clone().unwrap_or_default();
    let mut batch = BatchObject::new(id.clone(), &job, file.id.clone(), now_secs());
    batch.request_counts.total = lines.len() as u64;
    let record = BatchRecord {
        batch,
        key_id: key_id.to_owned(),
        owner,
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

/// `GET /v1/batches/{id}`.
pub(crate) async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let owner = caller.owner();
    let (record, _) = owned(&state, &id, &owner).await?;
    Ok(json(StatusCode::OK, &record.batch))
}

/// `GET /v1/batches?limit=&after=`: newest first.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let owner = caller.owner();
    let stores = stores(&state)?;
    let limit = match params.get("limit") {
        None => 20,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| ApiError::invalid("limit", "limit must be 1 to 100."))?,
    };
    let (records, has_more) = stores
        .newest(limit, params.get("after").map(String::as_str), |r| {
            r.owner() == owner
        })
        .await
        .map_err(storage_error)?;
    let data: Vec<_> = records.into_iter().map(|r| r.batch).collect();
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

/// `POST /v1/batches/{id}/cancel`: stops dispatching and cancels the items in flight;
/// the batch ends `cancelled` with partial files.
pub(crate) async fn cancel(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let owner = caller.owner();
    let stores = stores(&state)?;
    for _ in 0..20 {
        let (mut record, revision) = owned(&state, &id, &owner).await?;
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
