//! `POST /v1/images/generations`: OpenAI's image generation API, served by
//! OpenAI-compatible image models and Gemini's. Images come back inline or,
//! when large, through the blob store (docs/translation.md, "Images"); a
//! client that asks for links gets signed ones to `GET
//! /v1/images/content/{name}`, served here from the blob store for an hour.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;
use sy_protocol::images::{ImageData, ImageFrame, ImagesRequest};
use sy_protocol::{ErrorCode, ReplyFrame, TokenUsage};

use crate::error::ApiError;
use crate::relay::Pending;
use crate::state::AppState;
use crate::validate::{missing, object_fields, take_string};

/// Most images in one request (OpenAI's limit).
pub const MAX_IMAGES: u32 = 10;

/// Longest prompt, in characters (OpenAI's for gpt-image-1).
pub const MAX_PROMPT_CHARS: usize = 32_000;

/// Parses and validates an image generation body. Unknown fields are kept
/// and passed to OpenAI-compatible providers (`style`, `background`, …).
pub fn parse(body: &[u8]) -> Result<ImagesRequest, ApiError> {
    from_fields(object_fields(body)?)
}

/// The image files an edit takes, by extension.
pub const EDIT_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

/// Most images one edit takes (OpenAI's limit for gpt-image-1).
pub const MAX_EDIT_IMAGES: usize = 16;

/// An edit's form: the request (its uploads named for `request_id`) and the
/// files' bytes, to store once the request is admitted.
pub(crate) struct EditForm {
    pub request: ImagesRequest,
    pub uploads: Vec<(sy_protocol::audio::Upload, axum::body::Bytes)>,
}

/// Parses a `/v1/images/edits` multipart body: `image` (or `image[]`, one
/// to 16 PNG, JPEG or WebP files), an optional PNG `mask`, and the fields
/// of a generation as text.
pub(crate) async fn parse_edit(
    headers: &HeaderMap,
    body: axum::body::Bytes,
    request_id: uuid::Uuid,
) -> Result<EditForm, ApiError> {
    let form = crate::surface::form::read(headers, body, &["image", "mask"], "the images").await?;
    let mut fields = form.fields;
    // Numbers come as text in a form.
    if let Some(Value::String(n)) = fields.get("n") {
        let parsed = n
            .trim()
            .parse::<u64>()
            .map_or_else(|_| Value::String(n.clone()), Value::from);
        fields.insert("n".into(), parsed);
    }
    let mut request = from_fields(fields)?;
    let (mut images, mut mask) = (Vec::new(), None);
    for (i, f) in form.files.into_iter().enumerate() {
        let is_mask = f.field == "mask";
        let allowed: &[&str] = if is_mask { &["png"] } else { &EDIT_EXTENSIONS };
        if f.bytes.is_empty() || !allowed.contains(&f.extension().as_str()) {
            return Err(ApiError::invalid(
                f.field.clone(),
                format!(
                    "'{}' must be a non-empty {} file, not '{}'.",
                    f.field,
                    allowed.join(", "),
                    sy_protocol::bounded(&f.filename, 64)
                ),
            ));
        }
        if is_mask {
            if mask.is_some() {
                return Err(ApiError::invalid("mask", "'mask' is given twice."));
            }
            let upload = f.upload(format!("edit-{}-mask", request_id.as_simple()));
            mask = Some((upload, f.bytes));
        } else {
            let upload = f.upload(format!("edit-{}-{i}", request_id.as_simple()));
            images.push((upload, f.bytes));
        }
    }
    if images.is_empty() {
        return Err(missing("image"));
    }
    if images.len() > MAX_EDIT_IMAGES {
        return Err(ApiError::invalid(
            "image",
            format!("An edit takes at most {MAX_EDIT_IMAGES} images."),
        ));
    }
    request.edit = Some(sy_protocol::images::ImageEdit {
        images: images.iter().map(|(u, _)| u.clone()).collect(),
        mask: mask.as_ref().map(|(u, _)| u.clone()),
    });
    Ok(EditForm {
        request,
        uploads: images.into_iter().chain(mask).collect(),
    })
}

/// An image request from its fields (a JSON body's, or a form's).
fn from_fields(mut fields: Map<String, Value>) -> Result<ImagesRequest, ApiError> {
    let model = take_string(&mut fields, "model")?.ok_or_else(|| missing("model"))?;
    if model.trim().is_empty() {
        return Err(ApiError::invalid("model", "'model' must not be empty."));
    }
    let prompt = take_string(&mut fields, "prompt")?.ok_or_else(|| missing("prompt"))?;
    if prompt.trim().is_empty() {
        return Err(ApiError::invalid("prompt", "'prompt' must not be empty."));
    }
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(ApiError::invalid(
            "prompt",
            format!("'prompt' holds at most {MAX_PROMPT_CHARS} characters."),
        ));
    }
    let n = match fields.remove("n") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=10) => Some(n as u32),
            _ => {
                return Err(ApiError::invalid(
                    "n",
                    format!("'n' must be a whole number from 1 to {MAX_IMAGES}."),
                ));
            }
        },
    };
    let size = take_string(&mut fields, "size")?;
    if let Some(s) = &size
        && s != "auto"
        && !is_dimensions(s)
    {
        return Err(ApiError::invalid(
            "size",
            format!("'size' must be 'auto' or WIDTHxHEIGHT (such as 1024x1024), not '{s}'."),
        ));
    }
    let quality = take_string(&mut fields, "quality")?;
    if let Some(q) = &quality
        && !["auto", "standard", "hd", "low", "medium", "high"].contains(&q.as_str())
    {
        return Err(ApiError::invalid(
            "quality",
            format!("'quality' must be one of auto, standard, hd, low, medium, high, not '{q}'."),
        ));
    }
    let response_format = take_string(&mut fields, "response_format")?;
    if let Some(f) = &response_format
        && f != "url"
        && f != "b64_json"
    {
        return Err(ApiError::invalid(
            "response_format",
            format!("'response_format' must be 'url' or 'b64_json', not '{f}'."),
        ));
    }
    if let Some(f) = fields.get("output_format")
        && !matches!(f.as_str(), Some("png" | "jpeg" | "webp"))
    {
        return Err(ApiError::invalid(
            "output_format",
            "'output_format' must be 'png', 'jpeg' or 'webp'.",
        ));
    }
    if fields
        .get("stream")
        .is_some_and(|s| s != &Value::Bool(false))
        || fields.contains_key("partial_images")
    {
        return Err(ApiError::invalid(
            "stream",
            "Streamed image generation (partial images) is not supported; ask without 'stream'.",
        ));
    }
    fields.remove("stream");
    let user = take_string(&mut fields, "user")?;
    Ok(ImagesRequest {
        model,
        prompt,
        n,
        size,
        quality,
        response_format,
        user,
        extra: fields,
        edit: None,
    })
}

/// `WIDTHxHEIGHT`, each 1 to 5 digits.
fn is_dimensions(s: &str) -> bool {
    let ok = |d: &str| (1..=5).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit());
    s.split_once('x').is_some_and(|(w, h)| ok(w) && ok(h))
}

/// Where this ingress is reached, for links back to it: the client's
/// `Host` (and `X-Forwarded-Proto` behind a proxy).
pub(crate) fn origin_of(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    if host.is_empty() || host.contains(['/', ' ', '\\', '@']) {
        return None;
    }
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    Some(format!("{scheme}://{host}"))
}

/// The signature of a link to blob `name` valid until `expires` (Unix s).
fn signature(secret: &[u8; 32], name: &str, expires: u64) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(name.as_bytes());
    mac.update(&[0]);
    mac.update(expires.to_string().as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Waits for every frame of an image answer and writes OpenAI's body: each
/// image as the client asked (`b64_json` or `url`; as the provider sent it
/// when the client did not say), large ones read from the blob store or
/// linked to it.
pub(crate) async fn respond(
    state: &AppState,
    mut pending: Pending,
    first: ReplyFrame,
    req: Option<&ImagesRequest>,
    origin: Option<&str>,
) -> Result<Response, ApiError> {
    let mut frames = vec![first];
    while !matches!(frames.last(), Some(ReplyFrame::Final(_))) {
        frames.push(pending.next().await?);
    }
    let mut images: Vec<ImageFrame> = Vec::new();
    let mut usage = None;
    for frame in frames {
        match frame {
            ReplyFrame::Image(i) => images.push(i),
            ReplyFrame::Final(f) => {
                if let Some(e) = &f.error {
                    return Err(ApiError::from_frame(e));
                }
                usage = f.usage;
            }
            _ => {}
        }
    }
    images.sort_by_key(|i| i.index);
    let want = req.and_then(|r| r.response_format.as_deref());
    let mut data = Vec::with_capacity(images.len());
    for frame in images {
        data.push(render(state, frame.image, want, origin).await?);
    }
    let body = body(data, usage.as_ref());
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// One image of the answer in the form the client asked for.
async fn render(
    state: &AppState,
    image: ImageData,
    want: Option<&str>,
    origin: Option<&str>,
) -> Result<Value, ApiError> {
    let mut out = Map::new();
    match (want, image.url, image.b64_json, image.blob) {
        // The provider's own link (it was asked for the same form).
        (_, Some(url), _, _) => {
            out.insert("url".into(), url.into());
        }
        (Some("url"), None, inline, blob) => {
            let name = match (blob, inline) {
                (Some(name), _) => name,
                (None, Some(b64)) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|_| internal("an image that is no base64"))?;
                    let name = format!("img-{}", uuid::Uuid::now_v7().as_simple());
                    let store = blobs(state).await?;
                    let kind = image.content_type.as_deref().unwrap_or("image/png");
                    sy_bus::put_blob(store, &name, kind, &bytes)
                        .await
                        .map_err(|e| unavailable(&e.to_string()))?;
                    name
                }
                (None, None) => return Err(internal("an image without its bytes")),
            };
            let expires = sy_protocol::now_unix_ms() / 1000 + sy_bus::BLOB_MAX_AGE.as_secs();
            let sig = signature(&state.image_links_secret, &name, expires);
            let origin = origin.unwrap_or("");
            out.insert(
                "url".into(),
                format!("{origin}/v1/images/content/{name}?expires={expires}&signature={sig}")
                    .into(),
            );
        }
        (_, None, Some(b64), _) => {
            out.insert("b64_json".into(), b64.into());
        }
        (_, None, None, Some(name)) => {
            let store = blobs(state).await?;
            let (bytes, _) = sy_bus::get_blob(store, &name)
                .await
                .map_err(|e| unavailable(&e.to_string()))?
                .ok_or_else(|| internal("a generated image expired before it was read"))?;
            out.insert(
                "b64_json".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into(),
            );
        }
        (_, None, None, None) => return Err(internal("an image without its bytes")),
    }
    if let Some(p) = image.revised_prompt {
        out.insert("revised_prompt".into(), p.into());
    }
    Ok(Value::Object(out))
}

/// OpenAI's images body: `created`, `data`, and the tokens when the
/// provider counted them.
pub fn body(data: Vec<Value>, usage: Option<&TokenUsage>) -> Vec<u8> {
    let mut v = json!({
        "created": sy_protocol::now_unix_ms() / 1000,
        "data": data,
    });
    if let Some(u) = usage {
        v["usage"] = json!({
            "input_tokens": u.prompt_tokens(),
            "output_tokens": u.output_tokens,
            "total_tokens": u.total_tokens(),
        });
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

fn internal(what: &str) -> ApiError {
    ApiError::new(ErrorCode::Internal, what)
}

fn unavailable(why: &str) -> ApiError {
    ApiError {
        retry_after_secs: Some(1),
        ..ApiError::new(
            ErrorCode::Overloaded,
            format!("The image store is unavailable: {why}"),
        )
    }
}

async fn blobs(
    state: &AppState,
) -> Result<&async_nats::jetstream::object_store::ObjectStore, ApiError> {
    state
        .blobs
        .get_or_try_init(|| state.bus.blob_store())
        .await
        .map_err(|e| unavailable(&e.to_string()))
}

/// `GET /v1/images/content/{name}?expires=…&signature=…`: an image behind
/// a signed link (no key: the link is the credential, as OpenAI's are),
/// until it expires.
pub(crate) async fn content(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let refuse = |status: StatusCode, msg: &str| {
        (status, axum::Json(json!({"error": {"message": msg, "type": "invalid_request_error", "param": null, "code": "invalid_request"}}))).into_response()
    };
    let (Some(expires), Some(sig)) = (
        q.get("expires").and_then(|e| e.parse::<u64>().ok()),
        q.get("signature"),
    ) else {
        return refuse(StatusCode::FORBIDDEN, "This image link is not signed.");
    };
    let good = signature(&state.image_links_secret, &name, expires);
    let same = good.len() == sig.len()
        && good
            .bytes()
            .zip(sig.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return refuse(
            StatusCode::FORBIDDEN,
            "This image link's signature is wrong.",
        );
    }
    if expires < sy_protocol::now_unix_ms() / 1000 {
        return refuse(StatusCode::GONE, "This image link has expired.");
    }
    let store = match blobs(&state).await {
        Ok(s) => s,
        Err(e) => return e.render(sy_protocol::ApiSurface::Images),
    };
    match sy_bus::get_blob(store, &name).await {
        Ok(Some((bytes, kind))) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_str(&kind)
                        .unwrap_or(HeaderValue::from_static("application/octet-stream")),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("private, max-age=3600"),
                ),
            ],
            bytes,
        )
            .into_response(),
        Ok(None) => refuse(StatusCode::GONE, "This image is no longer stored."),
        Err(e) => unavailable(&e.to_string()).render(sy_protocol::ApiSurface::Images),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_body_parses_and_other_fields_pass_through() {
        let r = parse(
            br#"{"model":"gpt-image-1","prompt":"a lighthouse","n":2,"size":"1024x1536","quality":"high","response_format":"b64_json","background":"transparent","output_format":"webp"}"#,
        )
        .unwrap();
        assert_eq!(r.count(), 2);
        assert_eq!(r.size.as_deref(), Some("1024x1536"));
        assert_eq!(r.extra.get("background"), Some(&json!("transparent")));
        assert!(!r.extra.contains_key("prompt"));
    }

    #[test]
    fn bad_bodies_name_the_field() {
        for (bad, param) in [
            (r#"{"prompt":"p"}"#, Some("model")),
            (r#"{"model":"m"}"#, Some("prompt")),
            (r#"{"model":"m","prompt":"  "}"#, Some("prompt")),
            (r#"{"model":"m","prompt":"p","n":0}"#, Some("n")),
            (r#"{"model":"m","prompt":"p","n":11}"#, Some("n")),
            (r#"{"model":"m","prompt":"p","n":"2"}"#, Some("n")),
            (r#"{"model":"m","prompt":"p","size":"big"}"#, Some("size")),
            (r#"{"model":"m","prompt":"p","size":"1024x"}"#, Some("size")),
            (
                r#"{"model":"m","prompt":"p","quality":"ultra"}"#,
                Some("quality"),
            ),
            (
                r#"{"model":"m","prompt":"p","response_format":"png"}"#,
                Some("response_format"),
            ),
            (
                r#"{"model":"m","prompt":"p","output_format":"gif"}"#,
                Some("output_format"),
            ),
            (
                r#"{"model":"m","prompt":"p","stream":true}"#,
                Some("stream"),
            ),
            (r#"{"model":"m","prompt":5}"#, Some("prompt")),
            (r#"[1]"#, None),
            (r#"{"model":"m","prompt":"p"} x"#, None),
        ] {
            let e = parse(bad.as_bytes()).unwrap_err();
            assert_eq!(e.param.as_deref(), param, "{bad}: {}", e.message);
        }
        let long = format!(
            r#"{{"model":"m","prompt":"{}"}}"#,
            "x".repeat(MAX_PROMPT_CHARS + 1)
        );
        assert_eq!(
            parse(long.as_bytes()).unwrap_err().param.as_deref(),
            Some("prompt")
        );
    }

    #[test]
    fn a_link_signature_covers_the_name_and_the_expiry() {
        let secret = [7u8; 32];
        let s = signature(&secret, "img-a", 100);
        assert_eq!(s.len(), 64);
        assert_ne!(s, signature(&secret, "img-b", 100));
        assert_ne!(s, signature(&secret, "img-a", 101));
        assert_ne!(s, signature(&[8u8; 32], "img-a", 100));
    }

    #[test]
    fn the_origin_comes_from_host_and_a_forwarded_scheme() {
        let mut h = HeaderMap::new();
        assert_eq!(origin_of(&h), None);
        h.insert(header::HOST, HeaderValue::from_static("gw.example:8080"));
        assert_eq!(origin_of(&h).as_deref(), Some("http://gw.example:8080"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(origin_of(&h).as_deref(), Some("https://gw.example:8080"));
        h.insert(header::HOST, HeaderValue::from_static("evil/x"));
        assert_eq!(origin_of(&h), None);
    }
}
