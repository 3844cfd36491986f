//! Multipart bodies (audio uploads, image edits): read whole from a body
//! already limited by `[server] max_upload_bytes`, into text fields (a
//! field given twice refused, `name[]` fields collected in order) and the
//! files of the fields that may hold one.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart};
use axum::http::{HeaderMap, header};
use serde_json::{Map, Value};
use sy_protocol::ErrorCode;
use sy_protocol::audio::Upload;

use crate::error::ApiError;

/// The longest text field (a prompt, a language) a form may carry.
pub const MAX_FIELD_CHARS: usize = 32_000;

/// One uploaded file.
pub(crate) struct File {
    /// The form field it came in (`image[]` and `image` are both `image`).
    pub field: String,
    pub filename: String,
    pub content_type: Option<String>,
    pub bytes: Bytes,
}

impl File {
    /// Its upload record, stored as blob `blob`.
    pub(crate) fn upload(&self, blob: String) -> Upload {
        Upload {
            blob,
            filename: self.filename.clone(),
            content_type: self.content_type.clone(),
            bytes: self.bytes.len() as u64,
        }
    }

    /// Its file name's extension, lower case.
    pub(crate) fn extension(&self) -> String {
        self.filename
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default()
    }
}

/// A form's text fields (`name[]` ones as arrays of strings, under `name`)
/// and files.
pub(crate) struct Form {
    pub fields: Map<String, Value>,
    pub files: Vec<File>,
}

/// Reads a multipart body; only fields named in `file_fields` may hold
/// files. `what` names the form in errors ("the audio", "the images").
pub(crate) async fn read(
    headers: &HeaderMap,
    body: Bytes,
    file_fields: &[&str],
    what: &str,
) -> Result<Form, ApiError> {
    let not_a_form = |why: String| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "Send {what} as multipart/form-data with fields {} and 'model' ({why}).",
                file_fields
                    .iter()
                    .map(|f| format!("'{f}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    };
    let mut req = axum::extract::Request::new(Body::from(body));
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        req.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    let mut multipart = Multipart::from_request(req, &())
        .await
        .map_err(|e| not_a_form(e.body_text()))?;
    let mut form = Form {
        fields: Map::new(),
        files: Vec::new(),
    };
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(not_a_form(e.body_text())),
        };
        let raw = field.name().unwrap_or_default().to_owned();
        let listed = raw.strip_suffix("[]");
        let name = listed.unwrap_or(&raw).to_owned();
        if file_fields.contains(&name.as_str()) {
            let filename = field.file_name().map(str::to_owned).ok_or_else(|| {
                ApiError::invalid(name.clone(), format!("'{name}' must be a file upload."))
            })?;
            let content_type = field.content_type().map(str::to_owned);
            let bytes = field.bytes().await.map_err(|e| not_a_form(e.body_text()))?;
            form.files.push(File {
                field: name,
                filename,
                content_type,
                bytes,
            });
            continue;
        }
        if field.file_name().is_some() {
            return Err(ApiError::invalid(
                raw.clone(),
                format!("'{raw}' must be a text field; only {file_fields:?} hold files."),
            ));
        }
        let text = field.text().await.map_err(|e| not_a_form(e.body_text()))?;
        if text.chars().count() > MAX_FIELD_CHARS {
            return Err(ApiError::invalid(
                raw.clone(),
                format!("'{raw}' holds at most {MAX_FIELD_CHARS} characters."),
            ));
        }
        if listed.is_some() {
            match form
                .fields
                .entry(name)
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                Value::Array(items) => items.push(Value::String(text)),
                _ => {
                    return Err(ApiError::invalid(
                        raw.clone(),
                        format!("'{raw}' is given both as a list and as one value."),
                    ));
                }
            }
        } else if form.fields.insert(name, Value::String(text)).is_some() {
            return Err(ApiError::invalid(
                raw.clone(),
                format!("'{raw}' is given twice."),
            ));
        }
    }
    Ok(form)
}

/// A text field taken out of `fields` (a list is refused).
pub(crate) fn take(
    fields: &mut Map<String, Value>,
    name: &str,
) -> Result<Option<String>, ApiError> {
    match fields.remove(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(
            name,
            format!("'{name}' takes one value, not a list."),
        )),
    }
}

/// Stores an admitted request's uploads under the names its envelope
/// gives them; a store that cannot take them is a 503 to retry.
pub(crate) async fn store(
    state: &crate::state::AppState,
    uploads: &[(Upload, Bytes)],
) -> Result<(), ApiError> {
    let unavailable = |why: String| ApiError {
        retry_after_secs: Some(1),
        ..ApiError::new(
            ErrorCode::Overloaded,
            format!("The upload store is unavailable: {why}"),
        )
    };
    if uploads.is_empty() {
        return Ok(());
    }
    let store = state
        .blobs
        .get_or_try_init(|| state.bus.blob_store())
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    for (upload, bytes) in uploads {
        let kind = upload
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        sy_bus::put_blob(store, &upload.blob, kind, bytes)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
    }
    Ok(())
}
