//! The OpenAI Files API: `POST /v1/files` (multipart: `purpose=batch`,
//! `file`), `GET /v1/files`, `GET /v1/files/{id}`, `GET /v1/files/{id}/content`,
//! `DELETE /v1/files/{id}`. Every file belongs to the API key that uploaded
//! it; another key gets 404, as if it did not exist.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sy_protocol::ErrorCode;

use crate::batch::http::{json, owned_file, storage_error, stores, unreadable};
use crate::batch::{FileObject, new_id};
use crate::error::ApiError;
use crate::extract::Caller;
use crate::state::AppState;

/// `POST /v1/files`.
pub(crate) async fn upload(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    crate::intake::check_encoding(&headers)?;
    upload_inner(&state, &caller.owner(), multipart).await
}

async fn upload_inner(
    state: &AppState,
    owner: &str,
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
        .put_file(&object, owner, &data)
        .await
        .map_err(storage_error)?;
    tracing::info!(file = %object.id, bytes = object.bytes, owner, "File stored.");
    Ok(json(StatusCode::OK, &object))
}

/// `GET /v1/files`.
pub(crate) async fn list_files(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let owner = caller.owner();
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
        if info.deleted || info.metadata.get("owner").map(String::as_str) != Some(owner.as_str()) {
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

/// `GET /v1/files/{id}`.
pub(crate) async fn get_file(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let f = owned_file(&state, &id, &caller.owner()).await?;
    Ok(json(StatusCode::OK, &f))
}

/// `GET /v1/files/{id}/content`.
pub(crate) async fn file_content(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    owned_file(&state, &id, &caller.owner()).await?;
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

/// `DELETE /v1/files/{id}`.
pub(crate) async fn delete_file(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    owned_file(&state, &id, &caller.owner()).await?;
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
