//! `POST /v1/audio/transcriptions` and `/v1/audio/translations`: OpenAI's
//! speech-to-text API (multipart uploads), served by OpenAI-compatible
//! Whisper endpoints (OpenAI, Groq, vLLM). The upload goes to the blob
//! store once the request is admitted (its limits counted); the envelope
//! names it; the answer is the transcript in the format asked for.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sy_protocol::audio::TranscriptionRequest;
use sy_protocol::{ErrorCode, ReplyFrame};

use crate::error::ApiError;
use crate::relay::Pending;
use crate::validate::missing;

/// The audio formats OpenAI's API takes, by file extension.
pub const AUDIO_EXTENSIONS: [&str; 10] = [
    "flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "oga", "wav", "webm",
];

/// The answer formats.
pub const RESPONSE_FORMATS: [&str; 5] = ["json", "text", "srt", "vtt", "verbose_json"];

/// A parsed upload: the request (its blob named for `request_id`) and the
/// audio, to store once the request is admitted.
pub(crate) struct Form {
    pub request: TranscriptionRequest,
    pub audio: Bytes,
}

/// Parses a multipart body of `headers`' content type.
pub(crate) async fn parse(
    headers: &HeaderMap,
    body: Bytes,
    translate: bool,
    request_id: uuid::Uuid,
) -> Result<Form, ApiError> {
    let mut form = crate::surface::form::read(headers, body, &["file"], "the audio").await?;
    if form.files.len() > 1 {
        return Err(ApiError::invalid("file", "'file' is given twice."));
    }
    let file = form.files.pop().ok_or_else(|| missing("file"))?;
    let mut fields = form.fields;
    let granularities: Vec<String> = match fields.remove("timestamp_granularities") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(s)) => vec![s],
        Some(_) => Vec::new(),
    };
    if file.bytes.is_empty() {
        return Err(ApiError::invalid("file", "'file' is empty."));
    }
    let extension = file.extension();
    if !AUDIO_EXTENSIONS.contains(&extension.as_str()) {
        return Err(ApiError::invalid(
            "file",
            format!(
                "Unsupported file format '{}': send one of {}.",
                sy_protocol::bounded(&extension, 16),
                AUDIO_EXTENSIONS.join(", ")
            ),
        ));
    }
    let mut take = |name: &str| crate::surface::form::take(&mut fields, name);
    let model = take("model")?.ok_or_else(|| missing("model"))?;
    if model.trim().is_empty() {
        return Err(ApiError::invalid("model", "'model' must not be empty."));
    }
    let response_format = take("response_format")?;
    if let Some(f) = &response_format
        && !RESPONSE_FORMATS.contains(&f.as_str())
    {
        return Err(ApiError::invalid(
            "response_format",
            format!(
                "'response_format' must be one of {}, not '{}'.",
                RESPONSE_FORMATS.join(", "),
                sy_protocol::bounded(f, 32)
            ),
        ));
    }
    let temperature = match take("temperature")? {
        None => None,
        Some(t) => match t.trim().parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => Some(v),
            _ => {
                return Err(ApiError::invalid(
                    "temperature",
                    "'temperature' must be a number from 0 to 1.",
                ));
            }
        },
    };
    if let Some(g) = granularities
        .iter()
        .find(|g| *g != "word" && *g != "segment")
    {
        return Err(ApiError::invalid(
            "timestamp_granularities[]",
            format!(
                "'timestamp_granularities[]' takes 'word' and 'segment', not '{}'.",
                sy_protocol::bounded(g, 32)
            ),
        ));
    }
    if !granularities.is_empty() && response_format.as_deref() != Some("verbose_json") {
        return Err(ApiError::invalid(
            "timestamp_granularities[]",
            "'timestamp_granularities[]' needs 'response_format' verbose_json.",
        ));
    }
    let language = take("language")?;
    if translate && language.is_some() {
        return Err(ApiError::invalid(
            "language",
            "Translations are into English; 'language' is for transcriptions.",
        ));
    }
    let prompt = take("prompt")?;
    if fields.remove("stream").is_some_and(|s| s != "false") {
        return Err(ApiError::invalid(
            "stream",
            "Streamed transcription is not supported; ask without 'stream'.",
        ));
    }
    Ok(Form {
        request: TranscriptionRequest {
            model,
            translate,
            file: file.upload(format!("aud-{}", request_id.as_simple())),
            response_format,
            language,
            prompt,
            temperature,
            timestamp_granularities: granularities,
            extra: fields,
        },
        audio: file.bytes,
    })
}

/// Waits for the transcript and answers it with its media type.
pub(crate) async fn respond(mut pending: Pending, first: ReplyFrame) -> Result<Response, ApiError> {
    let mut frame = first;
    let mut text = None;
    loop {
        match frame {
            ReplyFrame::Text(t) => text = Some((t.content_type, t.body)),
            ReplyFrame::Final(f) => {
                if let Some(e) = &f.error {
                    return Err(ApiError::from_frame(e));
                }
                break;
            }
            _ => {}
        }
        frame = pending.next().await?;
    }
    let (kind, body) = text.ok_or_else(|| {
        ApiError::new(ErrorCode::Internal, "the transcript ended without its text")
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&kind).unwrap_or(HeaderValue::from_static("text/plain")),
        )],
        body,
    )
        .into_response())
}

/// The longest text `/v1/audio/speech` speaks (OpenAI's limit).
pub const MAX_SPEECH_CHARS: usize = 4096;

/// The audio formats speech comes in.
pub const SPEECH_FORMATS: [&str; 6] = ["mp3", "opus", "aac", "flac", "wav", "pcm"];

/// Parses and validates a `/v1/audio/speech` body.
pub fn parse_speech(body: &[u8]) -> Result<sy_protocol::audio::SpeechRequest, ApiError> {
    use crate::validate::{object_fields, take_string};
    let mut fields = object_fields(body)?;
    let model = take_string(&mut fields, "model")?.ok_or_else(|| missing("model"))?;
    if model.trim().is_empty() {
        return Err(ApiError::invalid("model", "'model' must not be empty."));
    }
    let input = take_string(&mut fields, "input")?.ok_or_else(|| missing("input"))?;
    if input.trim().is_empty() {
        return Err(ApiError::invalid("input", "'input' must not be empty."));
    }
    if input.chars().count() > MAX_SPEECH_CHARS {
        return Err(ApiError::invalid(
            "input",
            format!("'input' holds at most {MAX_SPEECH_CHARS} characters."),
        ));
    }
    let voice = match fields.remove("voice") {
        None | Some(Value::Null) => return Err(missing("voice")),
        Some(Value::String(s)) if !s.trim().is_empty() => Value::String(s),
        Some(Value::Object(o)) if o.get("id").is_some_and(Value::is_string) => Value::Object(o),
        Some(_) => {
            return Err(ApiError::invalid(
                "voice",
                "'voice' must be a voice's name or an object with its 'id'.",
            ));
        }
    };
    let response_format = take_string(&mut fields, "response_format")?;
    if let Some(f) = &response_format
        && !SPEECH_FORMATS.contains(&f.as_str())
    {
        return Err(ApiError::invalid(
            "response_format",
            format!(
                "'response_format' must be one of {}, not '{}'.",
                SPEECH_FORMATS.join(", "),
                sy_protocol::bounded(f, 32)
            ),
        ));
    }
    let speed = match fields.remove("speed") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(s) if (0.25..=4.0).contains(&s) => Some(s),
            _ => {
                return Err(ApiError::invalid(
                    "speed",
                    "'speed' must be a number from 0.25 to 4.",
                ));
            }
        },
    };
    let instructions = take_string(&mut fields, "instructions")?;
    if let Some(f) = fields.get("stream_format")
        && f != "audio"
    {
        return Err(ApiError::invalid(
            "stream_format",
            "Only 'stream_format' audio is supported: the audio's bytes stream as they come.",
        ));
    }
    Ok(sy_protocol::audio::SpeechRequest {
        model,
        input,
        voice,
        response_format,
        speed,
        instructions,
        extra: fields,
    })
}

/// Streams speech to the client as its frames arrive. A failure after the
/// first bytes aborts the body (the client sees a cut transfer, never a
/// complete one).
pub(crate) fn speech_response(
    pending: Pending,
    first: ReplyFrame,
    content_type: &'static str,
) -> Response {
    use base64::Engine;
    struct State {
        pending: Pending,
        first: Option<ReplyFrame>,
        done: bool,
    }
    let state = State {
        pending,
        first: Some(first),
        done: false,
    };
    let body = futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let frame = match st.first.take() {
                Some(f) => Ok(f),
                None => st.pending.next().await,
            };
            let out = match frame {
                Ok(ReplyFrame::Bytes(b)) => {
                    match base64::engine::general_purpose::STANDARD.decode(b.data) {
                        Ok(bytes) => Ok(Bytes::from(bytes)),
                        Err(e) => Err(std::io::Error::other(format!("an unreadable frame: {e}"))),
                    }
                }
                Ok(ReplyFrame::Final(f)) => {
                    st.done = true;
                    match f.error {
                        None => return None,
                        Some(e) => Err(std::io::Error::other(e.message)),
                    }
                }
                Ok(_) => continue,
                Err(e) => Err(std::io::Error::other(e.message)),
            };
            if out.is_err() {
                st.done = true;
            }
            return Some((out, st));
        }
    });
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> (HeaderMap, Bytes) {
        let boundary = "sy-boundary";
        let mut body = Vec::new();
        for (name, filename, data) in parts {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            match filename {
                Some(f) => body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: audio/wav\r\n\r\n").as_bytes(),
                ),
                None => body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}")).unwrap(),
        );
        (h, Bytes::from(body))
    }

    async fn parsed(parts: &[(&str, Option<&str>, &[u8])]) -> Result<Form, ApiError> {
        let (h, b) = form(parts);
        parse(&h, b, false, uuid::Uuid::nil()).await
    }

    #[tokio::test]
    async fn a_good_form_parses_with_its_fields() {
        let f = parsed(&[
            ("model", None, b"whisper-1"),
            ("file", Some("a.WAV"), b"RIFFdata"),
            ("response_format", None, b"verbose_json"),
            ("timestamp_granularities[]", None, b"word"),
            ("temperature", None, b"0.2"),
            ("language", None, b"de"),
        ])
        .await
        .unwrap();
        assert_eq!(f.request.model, "whisper-1");
        assert_eq!(f.request.file.filename, "a.WAV");
        assert_eq!(f.request.file.bytes, 8);
        assert_eq!(f.request.file.content_type.as_deref(), Some("audio/wav"));
        assert_eq!(f.request.format(), "verbose_json");
        assert_eq!(f.request.timestamp_granularities, ["word"]);
        assert_eq!(f.request.temperature, Some(0.2));
        assert_eq!(&f.audio[..], b"RIFFdata");
    }

    #[tokio::test]
    async fn bad_forms_name_the_field() {
        let wav: &[u8] = b"RIFF";
        for (parts, param) in [
            (vec![("file", Some("a.wav"), wav)], Some("model")),
            (vec![("model", None, b"m" as &[u8])], Some("file")),
            (
                vec![("model", None, b"m" as &[u8]), ("file", Some("a.txt"), wav)],
                Some("file"),
            ),
            (
                vec![
                    ("model", None, b"m" as &[u8]),
                    ("file", Some("a.wav"), b"" as &[u8]),
                ],
                Some("file"),
            ),
            (
                vec![
                    ("model", None, b"m" as &[u8]),
                    ("file", Some("a.wav"), wav),
                    ("response_format", None, b"xml"),
                ],
                Some("response_format"),
            ),
            (
                vec![
                    ("model", None, b"m" as &[u8]),
                    ("file", Some("a.wav"), wav),
                    ("temperature", None, b"3"),
                ],
                Some("temperature"),
            ),
            (
                vec![
                    ("model", None, b"m" as &[u8]),
                    ("file", Some("a.wav"), wav),
                    ("timestamp_granularities[]", None, b"word"),
                ],
                Some("timestamp_granularities[]"),
            ),
            (
                vec![
                    ("model", None, b"m" as &[u8]),
                    ("model", None, b"n" as &[u8]),
                    ("file", Some("a.wav"), wav),
                ],
                Some("model"),
            ),
            (
                vec![
                    ("model", None, b"m" as &[u8]),
                    ("file", Some("a.wav"), wav),
                    ("prompt", Some("p.txt"), wav),
                ],
                Some("prompt"),
            ),
        ] {
            let e = parsed(&parts).await.err().unwrap();
            assert_eq!(e.param.as_deref(), param, "{parts:?}: {}", e.message);
        }
        // Not a form at all.
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let e = parse(&h, Bytes::from_static(b"{}"), false, uuid::Uuid::nil())
            .await
            .err()
            .unwrap();
        assert!(e.message.contains("multipart/form-data"), "{}", e.message);
    }
}
