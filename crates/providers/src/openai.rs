//! OpenAI Chat Completions, and every server that speaks it (vLLM, DeepSeek, Groq…),
//! plus Azure OpenAI's deployment URLs and `api-key` header.
//! Wire format: <https://platform.openai.com/docs/api-reference/chat>.

use futures::StreamExt;

use http::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value};
use sy_config::{ProviderConfig, ProviderKind};
use sy_protocol::chat::{
    ChatRequest, ChoiceDelta, Content, ContentPart, Delta, FunctionCallDelta, Role, StreamOptions,
    ToolCall, ToolCallDelta,
};

use crate::ByteStream;
use crate::call::{self, Decoder, Step};
use crate::error::ErrorBody;
use crate::sse::SseEvent;
use crate::{
    CallContext, Chunk, ChunkStream, Embeddings, GeneratedImage, Images, Provider, ProviderError,
    Reranked, ResponseMeta, Transcript,
};
use sy_protocol::TokenUsage;
use sy_protocol::audio::{SpeechRequest, TranscriptionRequest};
use sy_protocol::embeddings::EmbeddingsRequest;
use sy_protocol::images::ImagesRequest;
use sy_protocol::rerank::RerankRequest;

/// The config `kind` of this dialect.
pub const KIND: &str = "openai_compatible";

/// An OpenAI-compatible provider: one pooled HTTP client per entry.
#[derive(Debug, Clone)]
pub struct OpenAiAdapter {
    kind: ProviderKind,
    client: reqwest::Client,
    base: String,
    api_version: Option<String>,
    headers: HeaderMap,
    auth: call::Auth,
}

impl OpenAiAdapter {
    /// Builds the adapter for a provider entry (OpenAI-compatible or Azure OpenAI).
    pub fn from_config(config: &ProviderConfig) -> Result<Self, ProviderError> {
        let azure = config.kind == ProviderKind::AzureOpenAi;
        let auth = if azure {
            call::Auth::Header("api-key")
        } else {
            call::Auth::Bearer
        };
        let credential = call::entry_credential(config, auth);
        Ok(OpenAiAdapter {
            kind: config.kind,
            auth,
            client: call::client(config)?,
            base: config.base_url.as_str().trim_end_matches('/').to_owned(),
            api_version: azure.then(|| config.api_version.clone().unwrap_or_default()),
            headers: call::headers(config, credential)?,
        })
    }

    /// Where to post `path` (`chat/completions`, `embeddings`): under the base, or
    /// under Azure's deployment URL (the target's model is the deployment name).
    fn url(&self, model: &str, path: &str) -> String {
        match &self.api_version {
            None => format!("{}/{path}", self.base),
            Some(v) => format!(
                "{}/openai/deployments/{model}/{path}?api-version={v}",
                self.base
            ),
        }
    }

    fn body(req: &ChatRequest, cx: &CallContext) -> Result<Vec<u8>, ProviderError> {
        let mut wire = req.clone();
        wire.model.clone_from(&cx.upstream_model);
        // Anthropic's exact budget has no OpenAI spelling; reasoning_effort carries it.
        wire.thinking_budget = None;
        // Caching breakpoints are Anthropic's; OpenAI-compatible APIs cache on their own.
        for m in &mut wire.messages {
            if let Some(Content::Parts(parts)) = &mut m.content {
                for p in parts {
                    if let ContentPart::Text { cache_control, .. } = p {
                        *cache_control = None;
                    }
                }
            }
        }
        for t in wire.tools.iter_mut().flatten() {
            t.cache_control = None;
        }
        if cx.stream {
            wire.stream = Some(true);
            // Usage at the end of every stream, for accounting, whatever the client asked.
            let mut opts = wire.stream_options.take().unwrap_or(StreamOptions {
                include_usage: None,
                extra: Map::new(),
            });
            opts.include_usage = Some(true);
            wire.stream_options = Some(opts);
        } else {
            wire.stream = None;
            wire.stream_options = None;
        }
        serde_json::to_vec(&wire).map_err(|e| ProviderError::Protocol(e.to_string()))
    }
}

impl Provider for OpenAiAdapter {
    fn kind(&self) -> ProviderKind {
        self.kind
    }

    async fn chat(
        &self,
        req: &ChatRequest,
        cx: &CallContext,
    ) -> Result<ChunkStream, ProviderError> {
        let resp = call::post_json(
            &self.client,
            &self.url(&cx.upstream_model, "chat/completions"),
            call::call_headers(&self.headers, self.auth, cx)?.as_ref(),
            Self::body(req, cx)?,
            read_error,
        )
        .await?;
        if cx.stream {
            Ok(call::sse_stream(resp, OpenAiDecoder::default()))
        } else {
            let body = call::body(resp).await?;
            let chunk = from_completion(&body)?;
            Ok(futures::stream::once(async move { Ok(chunk) }).boxed())
        }
    }

    async fn embed(
        &self,
        req: &EmbeddingsRequest,
        cx: &CallContext,
    ) -> Result<Embeddings, ProviderError> {
        let mut wire = req.clone();
        wire.model.clone_from(&cx.upstream_model);
        // Floats on the wire; the ingress encodes base64 for clients that ask.
        wire.encoding_format = Some("float".into());
        let body = serde_json::to_vec(&wire).map_err(|e| ProviderError::Protocol(e.to_string()))?;
        let resp = call::post_json(
            &self.client,
            &self.url(&cx.upstream_model, "embeddings"),
            call::call_headers(&self.headers, self.auth, cx)?.as_ref(),
            body,
            read_error,
        )
        .await?;
        from_embeddings(&call::body(resp).await?)
    }

    /// `POST {base}/rerank` in Jina's shape, which vLLM, Infinity and other
    /// OpenAI-compatible servers speak (`documents` as texts; the ingress
    /// adds the documents' texts to the answer itself). Azure OpenAI has no
    /// rerank API.
    async fn rerank(
        &self,
        req: &RerankRequest,
        cx: &CallContext,
    ) -> Result<Reranked, ProviderError> {
        if self.api_version.is_some() {
            return Err(ProviderError::Unsupported(
                "Azure OpenAI has no rerank API; route this model to a Cohere or OpenAI-compatible rerank model".into(),
            ));
        }
        let mut wire = req.extra.clone();
        wire.insert("model".into(), cx.upstream_model.clone().into());
        wire.insert("query".into(), req.query.clone().into());
        wire.insert("documents".into(), req.documents.clone().into());
        if let Some(n) = req.top_n {
            wire.insert("top_n".into(), n.into());
        }
        wire.insert("return_documents".into(), false.into());
        let body = serde_json::to_vec(&wire).map_err(|e| ProviderError::Protocol(e.to_string()))?;
        let resp = call::post_json(
            &self.client,
            &self.url(&cx.upstream_model, "rerank"),
            call::call_headers(&self.headers, self.auth, cx)?.as_ref(),
            body,
            read_error,
        )
        .await?;
        from_rerank(&call::body(resp).await?, req)
    }

    /// `POST {base}/images/generations` with the client's fields as sent
    /// (Azure: under the deployment).
    async fn images(&self, req: &ImagesRequest, cx: &CallContext) -> Result<Images, ProviderError> {
        let mut wire = req.clone();
        wire.model.clone_from(&cx.upstream_model);
        let body = serde_json::to_vec(&wire).map_err(|e| ProviderError::Protocol(e.to_string()))?;
        let resp = call::post_json(
            &self.client,
            &self.url(&cx.upstream_model, "images/generations"),
            call::call_headers(&self.headers, self.auth, cx)?.as_ref(),
            body,
            read_error,
        )
        .await?;
        from_images(&call::body(resp).await?, output_format(req))
    }

    /// `POST {base}/audio/transcriptions` (or `translations`) as a
    /// multipart form with the client's fields. A client asking for `text`
    /// is answered from `json` (whose usage says the seconds billed).
    async fn transcribe(
        &self,
        req: &TranscriptionRequest,
        audio: Vec<u8>,
        cx: &CallContext,
    ) -> Result<Transcript, ProviderError> {
        let asked = req.format();
        let wire_format = if asked == "text" { "json" } else { asked };
        let mut part = reqwest::multipart::Part::bytes(audio).file_name(req.file.filename.clone());
        if let Some(kind) = &req.file.content_type {
            part = part
                .mime_str(kind)
                .map_err(|_| ProviderError::Protocol(format!("bad media type {kind:?}")))?;
        }
        let mut form = reqwest::multipart::Form::new()
            .part("file", part)
            .text("model", cx.upstream_model.clone())
            .text("response_format", wire_format.to_owned());
        for (name, value) in [("language", &req.language), ("prompt", &req.prompt)] {
            if let Some(v) = value {
                form = form.text(name, v.clone());
            }
        }
        if let Some(t) = req.temperature {
            form = form.text("temperature", t.to_string());
        }
        for g in &req.timestamp_granularities {
            form = form.text("timestamp_granularities[]", g.clone());
        }
        form = with_fields(form, &req.extra);
        let path = if req.translate {
            "audio/translations"
        } else {
            "audio/transcriptions"
        };
        let resp = call::post_form(
            &self.client,
            &self.url(&cx.upstream_model, path),
            call::call_headers(&self.headers, self.auth, cx)?.as_ref(),
            form,
            read_error,
        )
        .await?;
        let raw = call::body(resp).await?;
        let text = String::from_utf8(raw.to_vec())
            .map_err(|_| ProviderError::Protocol("a transcript that is not UTF-8".into()))?;
        from_transcript(text, asked, wire_format)
    }

    /// `POST {base}/images/edits` as a multipart form: the images as
    /// `image[]` (one as `image`), the mask, and the client's fields.
    async fn edit_images(
        &self,
        req: &ImagesRequest,
        images: Vec<(sy_protocol::audio::Upload, Vec<u8>)>,
        cx: &CallContext,
    ) -> Result<Images, ProviderError> {
        let mask_blob = req
            .edit
            .as_ref()
            .and_then(|e| e.mask.as_ref())
            .map(|m| m.blob.clone());
        let pictures = images
            .iter()
            .filter(|(u, _)| Some(&u.blob) != mask_blob.as_ref())
            .count();
        let mut form = reqwest::multipart::Form::new()
            .text("model", cx.upstream_model.clone())
            .text("prompt", req.prompt.clone());
        for (upload, bytes) in images {
            let name = if Some(&upload.blob) == mask_blob.as_ref() {
                "mask"
            } else if pictures > 1 {
                "image[]"
            } else {
                "image"
            };
            let mut part =
                reqwest::multipart::Part::bytes(bytes).file_name(upload.filename.clone());
            if let Some(kind) = &upload.content_type {
                part = part
                    .mime_str(kind)
                    .map_err(|_| ProviderError::Protocol(format!("bad media type {kind:?}")))?;
            }
            form = form.part(name, part);
        }
        if let Some(n) = req.n {
            form = form.text("n", n.to_string());
        }
        for (name, value) in [
            ("size", &req.size),
            ("quality", &req.quality),
            ("response_format", &req.response_format),
            ("user", &req.user),
        ] {
            if let Some(v) = value {
                form = form.text(name, v.clone());
            }
        }
        form = with_fields(form, &req.extra);
        let resp = call::post_form(
            &self.client,
            &self.url(&cx.upstream_model, "images/edits"),
            call::call_headers(&self.headers, self.auth, cx)?.as_ref(),
            form,
            read_error,
        )
        .await?;
        from_images(&call::body(resp).await?, output_format(req))
    }

    /// `POST {base}/audio/speech` with the client's fields; the audio is
    /// relayed as it arrives.
    async fn speech(
        &self,
        req: &SpeechRequest,
        cx: &CallContext,
    ) -> Result<ByteStream, ProviderError> {
        let mut wire = req.clone();
        wire.model.clone_from(&cx.upstream_model);
        let body = serde_json::to_vec(&wire).map_err(|e| ProviderError::Protocol(e.to_string()))?;
        let resp = call::post_json(
            &self.client,
            &self.url(&cx.upstream_model, "audio/speech"),
            call::call_headers(&self.headers, self.auth, cx)?.as_ref(),
            body,
            read_error,
        )
        .await?;
        Ok(resp
            .bytes_stream()
            .map(|r| r.map_err(call::transport))
            .boxed())
    }
}

/// The client's other fields as form fields (strings as they are, other
/// values as JSON text).
fn with_fields(
    mut form: reqwest::multipart::Form,
    extra: &Map<String, Value>,
) -> reqwest::multipart::Form {
    for (name, value) in extra {
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        form = form.text(name.clone(), text);
    }
    form
}

/// The image format asked for (`output_format`; PNG by default).
fn output_format(req: &ImagesRequest) -> &str {
    req.extra
        .get("output_format")
        .and_then(Value::as_str)
        .unwrap_or("png")
}

/// An OpenAI images answer (`data` of `b64_json` or `url`, and
/// gpt-image-1's token `usage`); images of `format` (png, jpeg, webp).
pub fn from_images(raw: &[u8], format: &str) -> Result<Images, ProviderError> {
    #[derive(Deserialize)]
    struct Wire {
        data: Vec<Item>,
        usage: Option<Tokens>,
    }
    #[derive(Deserialize)]
    struct Item {
        b64_json: Option<String>,
        url: Option<String>,
        revised_prompt: Option<String>,
    }
    #[derive(Deserialize)]
    struct Tokens {
        #[serde(default)]
        input_tokens: u64,
        #[serde(default)]
        output_tokens: u64,
    }
    let w: Wire = call::json(raw)?;
    if w.data
        .iter()
        .any(|i| i.b64_json.is_none() && i.url.is_none())
    {
        return Err(ProviderError::Protocol(
            "an image without b64_json or url".into(),
        ));
    }
    let content_type = match format {
        "jpeg" | "jpg" => "image/jpeg",
        "webp" => "image/webp",
        _ => "image/png",
    };
    Ok(Images {
        images: w
            .data
            .into_iter()
            .map(|i| GeneratedImage {
                content_type: i.b64_json.is_some().then(|| content_type.to_owned()),
                url: i.url,
                b64: i.b64_json,
                revised_prompt: i.revised_prompt,
            })
            .collect(),
        usage: w.usage.map(|u| TokenUsage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            ..TokenUsage::default()
        }),
        model: None,
    })
}

/// A transcription answer in `wire` format turned into the client's
/// `asked` one (`text` from `json`), with the seconds and tokens it says.
pub fn from_transcript(body: String, asked: &str, wire: &str) -> Result<Transcript, ProviderError> {
    let (mut seconds, mut usage) = (None, None);
    let body = match wire {
        "json" | "verbose_json" => {
            let v: Value = serde_json::from_str(&body).map_err(|e| {
                ProviderError::Protocol(format!("a transcript that is no JSON: {e}"))
            })?;
            let text = v["text"]
                .as_str()
                .ok_or_else(|| ProviderError::Protocol("a transcript without text".into()))?;
            seconds = v["duration"].as_f64();
            let u = &v["usage"];
            match u["type"].as_str() {
                Some("duration") => seconds = seconds.or(u["seconds"].as_f64()),
                Some("tokens") => {
                    usage = Some(TokenUsage {
                        input_tokens: u["input_tokens"].as_u64().unwrap_or(0),
                        output_tokens: u["output_tokens"].as_u64().unwrap_or(0),
                        ..TokenUsage::default()
                    });
                }
                _ => {}
            }
            if asked == "text" {
                format!("{text}\n")
            } else {
                body
            }
        }
        // The last cue's end is the audio's length, near enough.
        "srt" | "vtt" => {
            seconds = last_cue_end(&body);
            body
        }
        _ => body,
    };
    let content_type = match asked {
        "json" | "verbose_json" => "application/json",
        "vtt" => "text/vtt; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    };
    Ok(Transcript {
        body,
        content_type: content_type.to_owned(),
        seconds,
        usage,
    })
}

/// The end of the last `HH:MM:SS,mmm --> HH:MM:SS,mmm` cue (SRT's comma
/// or VTT's dot), in seconds.
fn last_cue_end(body: &str) -> Option<f64> {
    let line = body.lines().rev().find(|l| l.contains("-->"))?;
    let end = line.split("-->").nth(1)?.trim();
    let end = end.split_whitespace().next()?.replace(',', ".");
    let mut secs = 0.0;
    for part in end.split(':') {
        secs = secs * 60.0 + part.parse::<f64>().ok()?;
    }
    Some(secs)
}

/// A Jina-style rerank answer (`results` of `index` and `relevance_score`,
/// `usage.total_tokens`), ranked.
pub fn from_rerank(raw: &[u8], req: &RerankRequest) -> Result<Reranked, ProviderError> {
    #[derive(Deserialize)]
    struct Wire {
        results: Vec<Item>,
        model: Option<String>,
        id: Option<String>,
        usage: Option<Tokens>,
    }
    #[derive(Deserialize)]
    struct Item {
        index: u32,
        relevance_score: f64,
    }
    #[derive(Deserialize)]
    struct Tokens {
        #[serde(default)]
        total_tokens: Option<u64>,
        #[serde(default)]
        prompt_tokens: Option<u64>,
    }
    let w: Wire = call::json(raw)?;
    let results = w
        .results
        .into_iter()
        .map(|i| (i.index, i.relevance_score))
        .collect();
    Ok(Reranked {
        results: crate::ranking(results, req)?,
        usage: w
            .usage
            .and_then(|u| u.total_tokens.or(u.prompt_tokens))
            .map(|n| TokenUsage {
                input_tokens: n,
                ..TokenUsage::default()
            }),
        search_units: None,
        model: w.model,
        id: w.id,
    })
}

/// An OpenAI embeddings answer, vectors in input order.
pub fn from_embeddings(raw: &[u8]) -> Result<Embeddings, ProviderError> {
    #[derive(Deserialize)]
    struct Wire {
        data: Vec<Item>,
        model: Option<String>,
        usage: Option<PromptOnly>,
    }
    #[derive(Deserialize)]
    struct Item {
        #[serde(default)]
        index: usize,
        embedding: Vec<f32>,
    }
    #[derive(Deserialize)]
    struct PromptOnly {
        prompt_tokens: u64,
    }
    let mut w: Wire = call::json(raw)?;
    w.data.sort_by_key(|i| i.index);
    Ok(Embeddings {
        vectors: w.data.into_iter().map(|i| i.embedding).collect(),
        usage: w.usage.map(|u| TokenUsage {
            input_tokens: u.prompt_tokens,
            ..TokenUsage::default()
        }),
        model: w.model,
    })
}

/// OpenAI's error body: `{"error": {"message", "type", "code"}}`.
pub fn read_error(raw: &[u8]) -> ErrorBody {
    call::read_error_fields(
        raw,
        &[&["error", "message"], &["message"]],
        &[&["error", "code"], &["error", "type"]],
    )
}

/// Turns an error status and body into a [`ProviderError`].
pub fn classify(
    status: u16,
    body: &[u8],
    retry_after: Option<std::time::Duration>,
) -> ProviderError {
    crate::error::classify(status, read_error(body), body, retry_after)
}

#[derive(Deserialize)]
struct WireCompletion {
    id: Option<String>,
    model: Option<String>,
    created: Option<i64>,
    system_fingerprint: Option<String>,
    #[serde(default)]
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
}

/// OpenAI's usage object: `prompt_tokens` includes cache reads
/// (`prompt_tokens_details.cached_tokens`, or DeepSeek's
/// `prompt_cache_hit_tokens`), `completion_tokens` includes reasoning.
#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<WirePromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<WireCompletionDetails>,
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WirePromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WireCompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl WireUsage {
    fn tokens(&self) -> TokenUsage {
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .or(self.prompt_cache_hit_tokens)
            .unwrap_or(0);
        let reasoning = self
            .completion_tokens_details
            .as_ref()
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0);
        TokenUsage::from_prompt_total(
            self.prompt_tokens,
            cached,
            0,
            self.completion_tokens,
            reasoning,
        )
    }
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    index: u32,
    message: WireMessage,
    finish_reason: Option<String>,
    logprobs: Option<Value>,
}

#[derive(Deserialize)]
struct WireMessage {
    role: Option<Role>,
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: Option<Vec<ToolCall>>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// A non-streamed completion as one chunk of whole messages.
pub fn from_completion(body: &[u8]) -> Result<Chunk, ProviderError> {
    let c: WireCompletion =
        serde_json::from_slice(body).map_err(|e| ProviderError::Protocol(e.to_string()))?;
    let choices = c
        .choices
        .into_iter()
        .map(|ch| ChoiceDelta {
            index: ch.index,
            delta: Delta {
                role: Some(ch.message.role.unwrap_or(Role::Assistant)),
                content: ch.message.content,
                refusal: ch.message.refusal,
                tool_calls: ch.message.tool_calls.map(|calls| {
                    calls
                        .into_iter()
                        .enumerate()
                        .map(|(i, call)| ToolCallDelta {
                            index: i as u32,
                            id: Some(call.id),
                            kind: Some(call.kind),
                            function: Some(FunctionCallDelta {
                                name: Some(call.function.name),
                                arguments: Some(call.function.arguments),
                            }),
                        })
                        .collect()
                }),
                extra: ch.message.extra,
            },
            finish_reason: ch.finish_reason,
            logprobs: ch.logprobs.filter(|v| !v.is_null()),
        })
        .collect();
    Ok(Chunk {
        meta: Some(ResponseMeta {
            response_id: c.id,
            served_model: c.model,
            created: c.created,
            system_fingerprint: c.system_fingerprint,
        }),
        choices,
        usage: c.usage.as_ref().map(WireUsage::tokens),
    })
}

#[derive(Deserialize)]
struct WireChunk {
    id: Option<String>,
    model: Option<String>,
    created: Option<i64>,
    system_fingerprint: Option<String>,
    #[serde(default)]
    choices: Vec<ChoiceDelta>,
    usage: Option<WireUsage>,
    error: Option<Value>,
}

/// One SSE `data:` payload of a stream as a chunk; `None` for `[DONE]`.
pub fn from_stream_data(data: &str, first: bool) -> Result<Option<Chunk>, ProviderError> {
    if data.trim() == "[DONE]" {
        return Ok(None);
    }
    let c: WireChunk =
        serde_json::from_str(data).map_err(|e| ProviderError::Protocol(e.to_string()))?;
    if let Some(err) = c.error {
        let raw = serde_json::json!({ "error": err }).to_string();
        return Err(crate::error::classify(
            502,
            read_error(raw.as_bytes()),
            raw.as_bytes(),
            None,
        ));
    }
    Ok(Some(Chunk {
        meta: first.then_some(ResponseMeta {
            response_id: c.id,
            served_model: c.model,
            created: c.created,
            system_fingerprint: c.system_fingerprint,
        }),
        choices: c.choices,
        usage: c.usage.as_ref().map(WireUsage::tokens),
    }))
}

/// Reads `chat.completion.chunk` events until `[DONE]`.
#[derive(Debug, Default)]
pub struct OpenAiDecoder {
    started: bool,
    finished: bool,
}

impl Decoder for OpenAiDecoder {
    fn event(&mut self, event: SseEvent) -> Result<Step, ProviderError> {
        match from_stream_data(&event.data, !self.started)? {
            None => Ok(Step::Done),
            Some(chunk) => {
                self.started = true;
                if chunk.choices.iter().any(|c| c.finish_reason.is_some()) {
                    self.finished = true;
                }
                Ok(Step::Chunk(chunk))
            }
        }
    }

    fn complete(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cache_breakpoints_are_not_sent_to_openai_compatible_providers() {
        let mark = serde_json::json!({"type": "ephemeral"});
        let req: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": mark}]}],
            "tools": [{"type": "function", "function": {"name": "look"}, "cache_control": mark}]
        }))
        .unwrap();
        let cx = CallContext {
            upstream_model: "gpt-4o".into(),
            stream: false,
            credential: None,
        };
        let wire: Value = serde_json::from_slice(&OpenAiAdapter::body(&req, &cx).unwrap()).unwrap();
        assert_eq!(
            wire["messages"][0]["content"],
            serde_json::json!([{"type": "text", "text": "hi"}])
        );
        assert_eq!(
            wire["tools"][0],
            serde_json::json!({"type": "function", "function": {"name": "look"}})
        );
    }

    #[test]
    fn wire_body_keeps_unknown_fields_and_asks_for_stream_usage() {
        let req: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "route-name",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": true,
            "stream_options": {"include_usage": false, "x_opt": 1},
            "logit_bias": {"1": 2},
            "parallel_tool_calls": false
        }))
        .unwrap();
        let cx = CallContext {
            upstream_model: "gpt-4o-2024".into(),
            stream: true,
            credential: None,
        };
        let wire: Value = serde_json::from_slice(&OpenAiAdapter::body(&req, &cx).unwrap()).unwrap();
        assert!(wire.get("x_switchyard_thinking_budget").is_none());
        assert_eq!(wire["model"], "gpt-4o-2024");
        assert_eq!(wire["logit_bias"], serde_json::json!({"1": 2}));
        assert_eq!(wire["parallel_tool_calls"], false);
        assert_eq!(wire["stream_options"]["include_usage"], true);
        assert_eq!(wire["stream_options"]["x_opt"], 1);
        let plain = CallContext {
            upstream_model: "m".into(),
            stream: false,
            credential: None,
        };
        let wire: Value =
            serde_json::from_slice(&OpenAiAdapter::body(&req, &plain).unwrap()).unwrap();
        assert!(wire.get("stream").is_none() && wire.get("stream_options").is_none());
    }

    #[test]
    fn azure_posts_to_the_deployment_with_its_key_header() {
        let config = sy_config::Config::from_toml(
            "[providers.az]\nkind = \"azure_openai\"\nbase_url = \"https://res.openai.azure.com\"\napi_key = \"k-1\"\napi_version = \"2024-10-21\"\n",
            &sy_config::MapEnv::default(),
        )
        .unwrap();
        let a = OpenAiAdapter::from_config(&config.providers["az"]).unwrap();
        assert_eq!(
            a.url("my-gpt4o", "chat/completions"),
            "https://res.openai.azure.com/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(a.headers["api-key"], "k-1");
        assert!(a.headers.get(http::header::AUTHORIZATION).is_none());
        let config = sy_config::Config::from_toml(
            "[providers.o]\nkind = \"openai\"\napi_key = \"k-2\"\n",
            &sy_config::MapEnv::default(),
        )
        .unwrap();
        let o = OpenAiAdapter::from_config(&config.providers["o"]).unwrap();
        assert_eq!(
            o.url("gpt-4o", "embeddings"),
            "https://api.openai.com/v1/embeddings"
        );
        assert_eq!(o.headers[http::header::AUTHORIZATION], "Bearer k-2");
    }

    #[test]
    fn completion_becomes_one_chunk_with_whole_message() {
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","created":5,"model":"gpt-4o-2024","system_fingerprint":"fp","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        let chunk = from_completion(body).unwrap();
        let meta = chunk.meta.unwrap();
        assert_eq!(meta.response_id.as_deref(), Some("chatcmpl-1"));
        assert_eq!(meta.served_model.as_deref(), Some("gpt-4o-2024"));
        let choice = &chunk.choices[0];
        assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
        let call = &choice.delta.tool_calls.as_ref().unwrap()[0];
        assert_eq!(call.id.as_deref(), Some("call_1"));
        assert_eq!(
            call.function.as_ref().unwrap().arguments.as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(chunk.usage.unwrap().total_tokens(), 7);
    }

    #[test]
    fn stream_data_maps_deltas_usage_and_done() {
        let c = from_stream_data(
            r#"{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
            true,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.choices[0].delta.content.as_deref(), Some("Hi"));
        assert!(c.meta.is_some());
        let u = from_stream_data(
            r#"{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
            false,
        )
        .unwrap()
        .unwrap();
        assert!(u.meta.is_none());
        assert_eq!(u.usage.unwrap().output_tokens, 2);
        assert!(from_stream_data("[DONE]", false).unwrap().is_none());
    }

    #[test]
    fn error_event_in_stream_is_an_error() {
        let e = from_stream_data(
            r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
            false,
        )
        .unwrap_err();
        assert!(
            matches!(e, ProviderError::Upstream { status: 502, ref message } if message == "overloaded")
        );
    }

    #[test]
    fn statuses_classify_without_leaking_keys() {
        let e = classify(
            401,
            br#"{"error":{"message":"Incorrect API key provided: sk-abc***xyz"}}"#,
            None,
        );
        assert!(!e.to_string().contains("sk-abc"));
        let e = classify(
            429,
            br#"{"error":{"message":"slow down"}}"#,
            Some(Duration::from_secs(2)),
        );
        let fe = e.to_frame_error("openai");
        assert_eq!(fe.code, sy_protocol::ErrorCode::RateLimited);
        assert_eq!(fe.retry_after_ms, Some(2000));
        let fe = classify(400, b"plain text", None).to_frame_error("openai");
        assert_eq!(fe.http_status(), 400);
        assert!(fe.message.contains("plain text"));
    }
}
