use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde_json::{Value, json};

use std::collections::HashMap;

use axum::extract::{Path, Query};

use crate::dialect::{Dialect, GeminiTarget};
use crate::directives::{Directives, extract, resolve};
use crate::{DEFAULT_TOKENS, prompt_tokens, reply_tokens};

/// A request body, or why it could not be read (counted like any request).
type ReadBody = Result<Bytes, BytesRejection>;

/// The largest body the mock reads: above any gateway's own limit, so that a
/// request the gateway accepted is never refused here for its size.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Prompts whose calls are counted one by one (see [`MockProvider::calls_for`]).
const COUNTED_PROMPTS: usize = 100_000;

/// How to run a mock.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Instance name, matched by `only=` directives.
    pub name: String,
    /// Listen address (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Directives applied to every request (lowest precedence).
    pub defaults: String,
    /// Bearer key to require, if any.
    pub api_key: Option<String>,
}

impl MockOptions {
    /// A mock named `name` on a free local port, without defaults or key.
    pub fn new(name: impl Into<String>) -> Self {
        MockOptions {
            name: name.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            defaults: String::new(),
            api_key: None,
        }
    }

    /// Listens on `addr`.
    pub fn with_listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Applies `defaults` (`key=value,...`) to every request.
    pub fn with_defaults(mut self, defaults: impl Into<String>) -> Self {
        self.defaults = defaults.into();
        self
    }

    /// Requires `Authorization: Bearer <key>`.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }
}

/// Counters since start (or the last reset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MockStats {
    /// Chat requests received, valid or not.
    pub requests: u64,
    /// Responses fully sent.
    pub completed: u64,
    /// Responses abandoned by the client before they were complete.
    pub cancelled: u64,
    /// Faults applied (status, cut, hang).
    pub faults: u64,
    /// OTLP/HTTP trace exports received on `/v1/traces` (the mock doubles
    /// as a collector that discards what it gets, for the bench).
    #[serde(default)]
    pub trace_exports: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    faults: AtomicU64,
    ids: AtomicU64,
    trace_exports: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> MockStats {
        MockStats {
            requests: self.requests.load(Ordering::SeqCst),
            completed: self.completed.load(Ordering::SeqCst),
            cancelled: self.cancelled.load(Ordering::SeqCst),
            faults: self.faults.load(Ordering::SeqCst),
            trace_exports: self.trace_exports.load(Ordering::SeqCst),
        }
    }
}

struct Shared {
    opts: MockOptions,
    counters: Counters,
    /// When the mock started or was last reset (`fail_for_ms` counts from it).
    since: std::sync::Mutex<tokio::time::Instant>,
    /// Anthropic prompt-cache prefixes seen (hashes), as a provider's cache would
    /// hold them; cleared by `/mock/reset`.
    cached_prefixes: std::sync::Mutex<std::collections::HashSet<u64>>,
    /// Chat calls per prompt (the last user message without directives), for
    /// tests that prove a request was never run twice.
    prompt_calls: std::sync::Mutex<HashMap<String, u64>>,
    /// The identities each prompt's calls named (`user`, `prompt_cache_key`,
    /// `safety_identifier`, Anthropic's `metadata.user_id`), for tests that
    /// check what a provider sees of a tenant's end users.
    prompt_identities: std::sync::Mutex<HashMap<String, Vec<String>>>,
}

/// A running mock; the server stops when this is dropped.
pub struct MockProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl MockProvider {
    /// Binds and starts serving in the background.
    pub async fn start(opts: MockOptions) -> anyhow::Result<MockProvider> {
        // Fail at start, not per request, on bad defaults.
        resolve(&opts.defaults, None, &[], &opts.name).map_err(|e| anyhow::anyhow!(e.0))?;
        let listener = tokio::net::TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            opts,
            counters: Counters::default(),
            since: std::sync::Mutex::new(tokio::time::Instant::now()),
            cached_prefixes: std::sync::Mutex::default(),
            prompt_calls: std::sync::Mutex::default(),
            prompt_identities: std::sync::Mutex::default(),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/chat/completions", post(openai))
            .route("/v1/messages", post(anthropic))
            .route("/v1beta/models/{action}", post(gemini))
            .route("/v1/models/{action}", post(gemini))
            .route("/v2/chat", post(cohere))
            .route("/v1/embeddings", post(openai_embed))
            .route("/embeddings", post(openai_embed))
            .route("/v2/embed", post(cohere_embed))
            .route("/v1/rerank", post(openai_rerank))
            .route("/rerank", post(openai_rerank))
            .route("/v2/rerank", post(cohere_rerank))
            .route("/v1/images/generations", post(openai_images))
            .route("/images/generations", post(openai_images))
            .route("/mock/images/{name}", get(image_file))
            .route("/v1/images/edits", post(image_edits))
            .route("/images/edits", post(image_edits))
            .route("/v1/audio/transcriptions", post(transcriptions))
            .route("/audio/transcriptions", post(transcriptions))
            .route("/v1/audio/translations", post(translations))
            .route("/v1/audio/speech", post(speech))
            .route("/audio/speech", post(speech))
            .route("/audio/translations", post(translations))
            .route("/v1/models", get(models))
            .route("/v1/traces", post(traces))
            .route("/mock/stats", get(stats))
            .route("/mock/reset", post(reset))
            .route("/healthz", get(|| async { "ok" }))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(shared.clone())
            .merge(crate::stripe::router(format!("http://{addr}")))
            .merge(crate::yookassa::router(format!("http://{addr}")));
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "Mock provider server failed.");
            }
        });
        Ok(MockProvider { addr, shared, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1`, the base URL an OpenAI-compatible or Anthropic provider
    /// entry points at.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The base URL for a provider entry of config kind `kind`: `/v1beta` for
    /// Gemini, `/v2` for Cohere, `/v1` otherwise.
    pub fn base_url_for(&self, kind: &str) -> String {
        match kind {
            "gemini" => format!("http://{}/v1beta", self.addr),
            "cohere" => format!("http://{}/v2", self.addr),
            _ => self.base_url(),
        }
    }

    /// The counters now.
    pub fn stats(&self) -> MockStats {
        self.shared.counters.snapshot()
    }

    /// Chat calls whose prompt (the last user message, directives removed) was
    /// `prompt`, since start or the last reset.
    pub fn calls_for(&self, prompt: &str) -> u64 {
        self.shared
            .prompt_calls
            .lock()
            .map(|m| m.get(prompt).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// The identity fields the calls with `prompt` carried, in call order.
    pub fn identities_for(&self, prompt: &str) -> Vec<String> {
        self.shared
            .prompt_identities
            .lock()
            .map(|m| m.get(prompt).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Stops serving.
    pub async fn shutdown(self) {
        self.task.abort();
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `POST /v1/traces`: an OTLP/HTTP export, counted and discarded (an empty
/// body is the empty `ExportTraceServiceResponse` in either encoding's
/// success).
async fn traces(State(s): State<Arc<Shared>>) -> StatusCode {
    s.counters.trace_exports.fetch_add(1, Ordering::SeqCst);
    StatusCode::OK
}

async fn stats(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(s.counters.snapshot()).into_response()
}

async fn reset(State(s): State<Arc<Shared>>) -> StatusCode {
    let c = &s.counters;
    for a in [
        &c.requests,
        &c.completed,
        &c.cancelled,
        &c.faults,
        &c.trace_exports,
    ] {
        a.store(0, Ordering::SeqCst);
    }
    *s.since.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
    s.cached_prefixes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    s.prompt_calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    s.prompt_identities
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    StatusCode::NO_CONTENT
}

async fn models() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]}),
    )
}

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Counts a response as completed when finished, or cancelled when dropped early
/// (unless it was cut on purpose).
struct Outcome {
    shared: Arc<Shared>,
    done: bool,
}

impl Outcome {
    fn new(shared: &Arc<Shared>) -> Self {
        Outcome {
            shared: shared.clone(),
            done: false,
        }
    }

    fn complete(mut self) {
        self.done = true;
        self.shared
            .counters
            .completed
            .fetch_add(1, Ordering::SeqCst);
    }

    fn cut(mut self) {
        self.done = true;
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if !self.done {
            self.shared
                .counters
                .cancelled
                .fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// What to answer, decided from the request.
pub(crate) struct Plan {
    pub dialect: Dialect,
    pub seq: u64,
    pub created: u64,
    pub model: String,
    pub prompt: String,
    pub n: usize,
    pub prompt_tokens: u64,
    pub d: Directives,
    pub include_usage: bool,
    /// Leading tokens of the answer the client supplied as an assistant prefill.
    pub skip: usize,
    /// (read, written) by Anthropic cache breakpoints: the prefix up to the last
    /// one is written the first time the mock sees it and read after.
    pub prompt_cache: (u64, u64),
}

impl Plan {
    pub fn tokens(&self) -> usize {
        self.d.tokens.unwrap_or(DEFAULT_TOKENS)
    }

    pub fn completion_tokens(&self) -> u64 {
        if self.d.tool_call.is_some() {
            self.tool_arguments().len().div_ceil(4) as u64
        } else {
            (self.tokens().saturating_sub(self.skip) * self.n) as u64
        }
    }

    /// Prompt tokens read from and written to the cache (inside `prompt_tokens`):
    /// the directives' when given, else what the request's cache breakpoints
    /// found ([`Plan::prompt_cache`]).
    pub fn cache(&self) -> (u64, u64) {
        let (read, write) = if self.d.cached_tokens.is_some() || self.d.cache_write.is_some() {
            (
                self.d.cached_tokens.unwrap_or(0),
                self.d.cache_write.unwrap_or(0),
            )
        } else {
            self.prompt_cache
        };
        let cached = read.min(self.prompt_tokens);
        (cached, write.min(self.prompt_tokens - cached))
    }

    pub fn tool_arguments(&self) -> String {
        let query: Vec<&str> = self.prompt.split_whitespace().take(3).collect();
        json!({"query": query.join(" ")}).to_string()
    }

    pub fn id(&self) -> String {
        format!("{}mock-{}", self.dialect.id_prefix(), self.seq)
    }

    pub fn tool_call_id(&self) -> String {
        format!("{}mock_{}", self.dialect.call_prefix(), self.seq)
    }

    pub fn text(&self, index: usize) -> Vec<String> {
        let mut t = reply_tokens(&self.prompt, self.tokens(), index);
        t.drain(..self.skip.min(t.len()));
        t
    }
}

async fn openai(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: ReadBody) -> Response {
    serve(shared, Dialect::OpenAi, headers, None, body).await
}

async fn anthropic(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: ReadBody,
) -> Response {
    serve(shared, Dialect::Anthropic, headers, None, body).await
}

async fn cohere(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: ReadBody) -> Response {
    serve(shared, Dialect::Cohere, headers, None, body).await
}

async fn gemini(
    State(shared): State<Arc<Shared>>,
    Path(action): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: ReadBody,
) -> Response {
    let embed = action.ends_with(":batchEmbedContents");
    // An image model's call: generateContent asking for IMAGE output.
    let image = action.ends_with(":generateContent")
        && body.as_ref().is_ok_and(|b| {
            b.windows(7).any(|w| w == b"\"IMAGE\"")
                && serde_json::from_slice::<Value>(b).is_ok_and(|v| {
                    v["generationConfig"]["responseModalities"]
                        .as_array()
                        .is_some_and(|m| m.iter().any(|x| x == "IMAGE"))
                })
        });
    let target = GeminiTarget {
        action,
        key: query.get("key").cloned(),
    };
    if embed {
        return serve_embed(shared, Dialect::Gemini, headers, Some(target), body).await;
    }
    if image {
        return serve_images(shared, Dialect::Gemini, headers, Some(target), body).await;
    }
    serve(shared, Dialect::Gemini, headers, Some(target), body).await
}

async fn openai_embed(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: ReadBody,
) -> Response {
    serve_embed(shared, Dialect::OpenAi, headers, None, body).await
}

async fn cohere_embed(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: ReadBody,
) -> Response {
    serve_embed(shared, Dialect::Cohere, headers, None, body).await
}

async fn openai_images(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: ReadBody,
) -> Response {
    serve_images(shared, Dialect::OpenAi, headers, None, body).await
}

/// `GET /mock/images/{seed}x{w}x{h}.png`: the image an OpenAI answer linked.
async fn image_file(Path(name): Path<String>) -> Response {
    let parts: Vec<u64> = name
        .trim_end_matches(".png")
        .split('x')
        .filter_map(|p| p.parse().ok())
        .collect();
    let [seed, w, h] = parts[..] else {
        return StatusCode::NOT_FOUND.into_response();
    };
    (
        [(axum::http::header::CONTENT_TYPE, "image/png")],
        crate::png::png(w as u32, h as u32, seed),
    )
        .into_response()
}

/// Image generation: `n` PNGs of the asked size (32×32 unless `size`
/// says), coloured by the prompt; directives in the prompt apply.
async fn serve_images(
    shared: Arc<Shared>,
    dialect: Dialect,
    headers: HeaderMap,
    gemini: Option<GeminiTarget>,
    body: ReadBody,
) -> Response {
    use base64::Engine;
    let req = match admit(&shared, dialect, &headers, gemini.as_ref(), &body) {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    let prompt = match dialect {
        Dialect::Gemini => req["contents"][0]["parts"][0]["text"].as_str(),
        _ => req["prompt"].as_str(),
    };
    let Some(prompt) = prompt else {
        return dialect.error(400, "prompt is required", None);
    };
    let (text, blocks) = extract(prompt);
    if let Err(resp) = one_shot_directives(&shared, dialect, &headers, &blocks).await {
        return *resp;
    }
    let (w, h) = crate::png::dimensions(req["size"].as_str());
    let n = req["n"].as_u64().unwrap_or(1).clamp(1, 10) as usize;
    let words = text.split_whitespace().count() as u64;
    let b64 = |i: usize| {
        base64::engine::general_purpose::STANDARD.encode(crate::png::png(
            w,
            h,
            crate::seed(&text, i),
        ))
    };
    let answer = match dialect {
        Dialect::Gemini => json!({
            "candidates": [{"content": {"role": "model",
                "parts": [{"inlineData": {"mimeType": "image/png", "data": b64(0)}}]},
                "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": words, "candidatesTokenCount": 1290,
                "totalTokenCount": words + 1290},
            "modelVersion": gemini.as_ref().map_or("", |g| g.action.split(':').next().unwrap_or("")),
        }),
        _ => {
            let host = headers
                .get(axum::http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("127.0.0.1");
            let data: Vec<Value> = (0..n)
                .map(|i| {
                    if req["response_format"] == "url" {
                        json!({"url": format!("http://{host}/mock/images/{}x{w}x{h}.png", crate::seed(&text, i))})
                    } else {
                        json!({"b64_json": b64(i), "revised_prompt": format!("{text}, drawn")})
                    }
                })
                .collect();
            json!({"created": 1_700_000_000, "data": data,
                "usage": {"input_tokens": words, "output_tokens": 100 * n as u64,
                    "total_tokens": words + 100 * n as u64}})
        }
    };
    let resp = json_response(StatusCode::OK, &answer);
    shared.counters.completed.fetch_add(1, Ordering::SeqCst);
    resp
}

async fn transcriptions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    form: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    serve_audio(shared, headers, form, false).await
}

async fn translations(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    form: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    serve_audio(shared, headers, form, true).await
}

/// A multipart call (OpenAI's dialect): counted, its key checked, its form
/// readable; else the dialect's error.
fn admit_form(
    shared: &Shared,
    headers: &HeaderMap,
    form: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<axum::extract::Multipart, Box<Response>> {
    let dialect = Dialect::OpenAi;
    shared.counters.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(key) = &shared.opts.api_key
        && !dialect.authorized(headers, None, key)
    {
        return Err(Box::new(dialect.error(
            401,
            "Incorrect API key provided",
            Some("invalid_api_key"),
        )));
    }
    form.map_err(|_| Box::new(dialect.error(400, "send multipart/form-data", None)))
}

/// Speech to text (OpenAI's multipart API): a transcript of the upload in
/// the asked format; directives in the `prompt` field (or the header).
async fn serve_audio(
    shared: Arc<Shared>,
    headers: HeaderMap,
    form: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
    translate: bool,
) -> Response {
    let dialect = Dialect::OpenAi;
    let mut form = match admit_form(&shared, &headers, form) {
        Ok(f) => f,
        Err(resp) => return *resp,
    };
    let (mut audio, mut format, mut prompt, mut model) = (None, None, String::new(), None);
    while let Ok(Some(field)) = form.next_field().await {
        match field.name().unwrap_or_default() {
            "file" => audio = field.bytes().await.ok(),
            "response_format" => format = field.text().await.ok(),
            "prompt" => prompt = field.text().await.unwrap_or_default(),
            "model" => model = field.text().await.ok(),
            _ => {}
        }
    }
    let (Some(audio), Some(_model)) = (audio, model) else {
        return dialect.error(400, "file and model are required", None);
    };
    let format = format.unwrap_or_else(|| "json".into());
    if !crate::audio::known_format(&format) {
        return dialect.error(400, "unknown response_format", None);
    }
    let blocks = extract(&prompt).1;
    if let Err(resp) = one_shot_directives(&shared, dialect, &headers, &blocks).await {
        return *resp;
    }
    let (body, kind) = crate::audio::answer(&audio, &format, translate);
    shared.counters.completed.fetch_add(1, Ordering::SeqCst);
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// Image edits (OpenAI's multipart API): PNGs seeded by `edit: <prompt>`,
/// each with a `revised_prompt` saying how many images (and bytes) and
/// whether a mask arrived; directives in the prompt apply.
async fn image_edits(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    form: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    use base64::Engine;
    let dialect = Dialect::OpenAi;
    let mut form = match admit_form(&shared, &headers, form) {
        Ok(f) => f,
        Err(resp) => return *resp,
    };
    let (mut images, mut bytes, mut mask, mut prompt, mut size, mut n) =
        (0usize, 0usize, false, None, None, 1usize);
    while let Ok(Some(field)) = form.next_field().await {
        match field.name().unwrap_or_default() {
            "image" | "image[]" => {
                images += 1;
                bytes += field.bytes().await.map_or(0, |b| b.len());
            }
            "mask" => mask = field.bytes().await.is_ok_and(|b| !b.is_empty()),
            "prompt" => prompt = field.text().await.ok(),
            "size" => size = field.text().await.ok(),
            "n" => {
                n = field
                    .text()
                    .await
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(1)
            }
            _ => {}
        }
    }
    let (Some(prompt), true) = (prompt, images > 0) else {
        return dialect.error(400, "image and prompt are required", None);
    };
    let (text, blocks) = extract(&prompt);
    if let Err(resp) = one_shot_directives(&shared, dialect, &headers, &blocks).await {
        return *resp;
    }
    let (w, h) = crate::png::dimensions(size.as_deref());
    let masked = if mask { ", masked" } else { "" };
    let data: Vec<Value> = (0..n.clamp(1, 10))
        .map(|i| {
            let png = crate::png::png(w, h, crate::seed(&format!("edit: {text}"), i));
            json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(png),
                "revised_prompt": format!("{text}, edited from {images} images of {bytes} bytes{masked}")})
        })
        .collect();
    let words = text.split_whitespace().count() as u64;
    shared.counters.completed.fetch_add(1, Ordering::SeqCst);
    json_response(
        StatusCode::OK,
        &json!({"created": 1_700_000_000, "data": data,
            "usage": {"input_tokens": words, "output_tokens": 100 * data.len() as u64,
                "total_tokens": words + 100 * data.len() as u64}}),
    )
}

/// Text to speech: the audio of the input, streamed in 4 KiB chunks;
/// `delay_ms` paces them, `cut_after` drops the connection after that many,
/// `status` and `ttft_ms` apply before the first.
async fn speech(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: ReadBody) -> Response {
    let dialect = Dialect::OpenAi;
    let req = match admit(&shared, dialect, &headers, None, &body) {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    let Some(input) = req["input"].as_str() else {
        return dialect.error(400, "input is required", None);
    };
    let blocks = extract(input).1;
    let d = match directives(&shared, dialect, &headers, &blocks) {
        Ok(d) => d,
        Err(resp) => return *resp,
    };
    if let Err(resp) = one_shot_directives(&shared, dialect, &headers, &blocks).await {
        return *resp;
    }
    let format = req["response_format"].as_str().unwrap_or("mp3");
    let audio = crate::audio::speech_bytes(input, format);
    let chunks: Vec<Bytes> = audio.chunks(4096).map(Bytes::copy_from_slice).collect();
    let (delay, cut) = (d.delay, d.cut_after);
    let counters = shared.clone();
    let body = futures::stream::unfold((chunks.into_iter(), 0usize), move |(mut it, n)| {
        let counters = counters.clone();
        async move {
            if cut == Some(n) {
                counters.counters.faults.fetch_add(1, Ordering::SeqCst);
                return Some((
                    Err(std::io::Error::other("cut by a mock directive")),
                    (it, n + 1),
                ));
            }
            let chunk = it.next()?;
            if let Some(d) = delay.filter(|_| n > 0) {
                tokio::time::sleep(d).await;
            }
            if it.len() == 0 {
                counters.counters.completed.fetch_add(1, Ordering::SeqCst);
            }
            Some((Ok::<_, std::io::Error>(chunk), (it, n + 1)))
        }
    });
    let kind = match format {
        "wav" => "audio/wav",
        "pcm" => "audio/pcm",
        "opus" => "audio/ogg",
        "aac" => "audio/aac",
        "flac" => "audio/flac",
        _ => "audio/mpeg",
    };
    ([(header::CONTENT_TYPE, kind)], Body::from_stream(body)).into_response()
}

async fn openai_rerank(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: ReadBody,
) -> Response {
    serve_rerank(shared, Dialect::OpenAi, headers, body).await
}

async fn cohere_rerank(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: ReadBody,
) -> Response {
    serve_rerank(shared, Dialect::Cohere, headers, body).await
}

/// Rerank: documents ranked by a deterministic relevance; directives in
/// the query or any document apply (or in the `x-mock` header).
async fn serve_rerank(
    shared: Arc<Shared>,
    dialect: Dialect,
    headers: HeaderMap,
    body: ReadBody,
) -> Response {
    let req = match admit(&shared, dialect, &headers, None, &body) {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    let parsed = match dialect.parse_rerank(&req) {
        Ok(p) => p,
        Err(message) => return dialect.error(400, &message, None),
    };
    let blocks: Vec<String> = std::iter::once(&parsed.query)
        .chain(&parsed.documents)
        .flat_map(|t| extract(t).1)
        .collect();
    if let Err(resp) = one_shot_directives(&shared, dialect, &headers, &blocks).await {
        return *resp;
    }
    let resp = json_response(StatusCode::OK, &dialect.rerank_answer(&parsed));
    shared.counters.completed.fetch_add(1, Ordering::SeqCst);
    resp
}

/// Counts the request, checks the key the dialect's way and parses the JSON body;
/// a refusal comes back as the dialect's error response.
fn admit(
    shared: &Shared,
    dialect: Dialect,
    headers: &HeaderMap,
    gemini: Option<&GeminiTarget>,
    body: &ReadBody,
) -> Result<Value, Box<Response>> {
    shared.counters.requests.fetch_add(1, Ordering::SeqCst);
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let status = e.status().as_u16();
            return Err(Box::new(dialect.error(status, &e.body_text(), None)));
        }
    };
    if let Some(key) = &shared.opts.api_key
        && !dialect.authorized(headers, gemini, key)
    {
        return Err(Box::new(dialect.error(
            401,
            "Incorrect API key provided",
            Some("invalid_api_key"),
        )));
    }
    serde_json::from_slice::<Value>(body).map_err(|_| {
        Box::new(dialect.error(
            400,
            "We could not parse the JSON body of your request.",
            None,
        ))
    })
}

/// The request's directives: defaults < `x-mock` header < message `blocks`.
fn directives(
    shared: &Shared,
    dialect: Dialect,
    headers: &HeaderMap,
    blocks: &[String],
) -> Result<Directives, Box<Response>> {
    let header = headers.get("x-mock").and_then(|v| v.to_str().ok());
    resolve(&shared.opts.defaults, header, blocks, &shared.opts.name)
        .map_err(|e| Box::new(dialect.error(400, &e.0, None)))
}

/// The directives of a call answered whole (embeddings, rerank, images):
/// a fault status is the answer; else waits `ttft_ms`, or forever on
/// `hang` (the caller's timeout ends it).
async fn one_shot_directives(
    shared: &Shared,
    dialect: Dialect,
    headers: &HeaderMap,
    blocks: &[String],
) -> Result<(), Box<Response>> {
    let d = directives(shared, dialect, headers, blocks)?;
    if let Some(status) = d
        .status
        .or_else(|| dialect.error_status(d.error.as_deref()))
    {
        shared.counters.faults.fetch_add(1, Ordering::SeqCst);
        return Err(Box::new(dialect.fault(status, d.error.as_deref(), 0)));
    }
    if let Some(t) = d.ttft {
        tokio::time::sleep(t).await;
    }
    if d.hang {
        std::future::pending::<()>().await;
    }
    Ok(())
}

/// Embeddings: deterministic vectors of each text; directives in any text apply.
async fn serve_embed(
    shared: Arc<Shared>,
    dialect: Dialect,
    headers: HeaderMap,
    gemini: Option<GeminiTarget>,
    body: ReadBody,
) -> Response {
    let req = match admit(&shared, dialect, &headers, gemini.as_ref(), &body) {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    let parsed = match dialect.parse_embed(&req, gemini.as_ref()) {
        Ok(p) => p,
        Err(message) => return dialect.error(400, &message, None),
    };
    let blocks: Vec<String> = parsed.texts.iter().flat_map(|t| extract(t).1).collect();
    if let Err(resp) = one_shot_directives(&shared, dialect, &headers, &blocks).await {
        return *resp;
    }
    let resp = json_response(StatusCode::OK, &dialect.embed_answer(&parsed));
    shared.counters.completed.fetch_add(1, Ordering::SeqCst);
    resp
}

async fn serve(
    shared: Arc<Shared>,
    dialect: Dialect,
    headers: HeaderMap,
    gemini: Option<GeminiTarget>,
    body: ReadBody,
) -> Response {
    let req = match admit(&shared, dialect, &headers, gemini.as_ref(), &body) {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    let parsed = match dialect.parse(&req, gemini.as_ref()) {
        Ok(p) => p,
        Err(message) => return dialect.error(400, &message, None),
    };
    let (prompt, blocks) = extract(&parsed.last_user);
    if let Ok(mut calls) = shared.prompt_calls.lock()
        && (calls.len() < COUNTED_PROMPTS || calls.contains_key(&prompt))
    {
        *calls.entry(prompt.clone()).or_default() += 1;
    }
    let named: Vec<String> = [
        &req["user"],
        &req["prompt_cache_key"],
        &req["safety_identifier"],
        &req["metadata"]["user_id"],
    ]
    .iter()
    .filter_map(|v| v.as_str().map(str::to_owned))
    .collect();
    if !named.is_empty()
        && let Ok(mut ids) = shared.prompt_identities.lock()
        && (ids.len() < COUNTED_PROMPTS || ids.contains_key(&prompt))
    {
        ids.entry(prompt.clone()).or_default().extend(named);
    }
    let d = match directives(&shared, dialect, &headers, &blocks) {
        Ok(d) => d,
        Err(resp) => return *resp,
    };
    if !(1..=8).contains(&parsed.n) {
        return dialect.error(400, "the mock supports n from 1 to 8", None);
    }
    if parsed.prefill.is_some() && d.no_prefill {
        return dialect.error(400, "this model does not continue assistant messages", None);
    }
    // A prefill that is the start of the answer is continued; any other
    // prefill gets the whole answer (as a real model would say something else).
    let skip = parsed.prefill.as_deref().map_or(0, |p| {
        let tokens = reply_tokens(&prompt, d.tokens.unwrap_or(DEFAULT_TOKENS), 0);
        let mut acc = String::new();
        tokens
            .iter()
            .position(|t| {
                acc.push_str(t);
                acc == p.trim_end()
            })
            .map_or(0, |k| k + 1)
    });
    let prompt_cache = parsed.cache_prefix.map_or((0, 0), |(hash, tokens)| {
        let fresh = shared
            .cached_prefixes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash);
        if fresh { (0, tokens) } else { (tokens, 0) }
    });
    let plan = Plan {
        dialect,
        seq: shared.counters.ids.fetch_add(1, Ordering::Relaxed),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        model: parsed.model,
        prompt,
        n: parsed.n,
        prompt_tokens: prompt_tokens(&parsed.texts),
        include_usage: parsed.include_usage,
        d,
        skip,
        prompt_cache,
    };
    let outcome = Outcome::new(&shared);
    if plan.d.hang {
        shared.counters.faults.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    if let Some(t) = plan.d.headers {
        tokio::time::sleep(t).await;
    }
    let failing = plan.d.fail_for.is_none_or(|t| {
        shared
            .since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            < t
    });
    if let Some(status) = plan
        .d
        .status
        .or_else(|| dialect.error_status(plan.d.error.as_deref()))
        .filter(|_| failing)
    {
        shared.counters.faults.fetch_add(1, Ordering::SeqCst);
        if let Some(t) = plan.d.ttft {
            tokio::time::sleep(t).await;
        }
        let mut resp = dialect.fault(status, plan.d.error.as_deref(), plan.prompt_tokens);
        if let Some(secs) = plan.d.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        outcome.complete();
        return resp;
    }
    if parsed.stream {
        return stream(shared, &plan, outcome);
    }
    if let Some(t) = plan.d.ttft {
        tokio::time::sleep(t).await;
    }
    if plan.d.cut_after.is_some() {
        shared.counters.faults.fetch_add(1, Ordering::SeqCst);
        outcome.cut();
        let body = Body::from_stream(futures::stream::once(async {
            Err::<Bytes, _>(std::io::Error::other("mock fault: cut"))
        }));
        return (StatusCode::OK, body).into_response();
    }
    let resp = json_response(StatusCode::OK, &dialect.answer(&plan));
    outcome.complete();
    resp
}

struct StreamState {
    events: std::vec::IntoIter<(Bytes, bool)>,
    ttft: Option<Duration>,
    delay: Option<Duration>,
    cut_after: Option<usize>,
    stall_after: Option<usize>,
    garbage_after: Option<usize>,
    content_sent: usize,
    first: bool,
    outcome: Option<Outcome>,
    shared: Arc<Shared>,
}

fn stream(shared: Arc<Shared>, plan: &Plan, outcome: Outcome) -> Response {
    let state = StreamState {
        events: {
            let mut events = plan.dialect.events(plan);
            if plan.d.no_done {
                events.retain(|(b, _)| b.as_ref() != b"data: [DONE]\n\n");
            }
            events.into_iter()
        },
        ttft: plan.d.ttft,
        delay: plan.d.delay,
        cut_after: plan.d.cut_after,
        stall_after: plan.d.stall_after,
        garbage_after: plan.d.garbage_after,
        content_sent: 0,
        first: true,
        outcome: Some(outcome),
        shared,
    };
    let body = futures::stream::unfold(state, |mut st| async move {
        if st.cut_after.is_some_and(|n| st.content_sent >= n) {
            st.shared.counters.faults.fetch_add(1, Ordering::SeqCst);
            if let Some(o) = st.outcome.take() {
                o.cut();
            }
            st.cut_after = None;
            st.events = Vec::new().into_iter();
            // Let hyper flush what was sent, as a real connection drop would,
            // before aborting the connection.
            tokio::time::sleep(Duration::from_millis(20)).await;
            return Some((Err(std::io::Error::other("mock fault: cut")), st));
        }
        if st.stall_after.is_some_and(|n| st.content_sent >= n) {
            st.shared.counters.faults.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        if st.garbage_after.is_some_and(|n| st.content_sent >= n) {
            st.shared.counters.faults.fetch_add(1, Ordering::SeqCst);
            st.garbage_after = None;
            st.events = Vec::new().into_iter();
            if let Some(o) = st.outcome.take() {
                o.cut();
            }
            let junk = Bytes::from_static(b"data: {\"choices\": [{\"delta\": \n\n");
            return Some((Ok(junk), st));
        }
        let Some((bytes, is_content)) = st.events.next() else {
            if let Some(o) = st.outcome.take() {
                o.complete();
            }
            return None;
        };
        let wait = if st.first { st.ttft } else { st.delay };
        st.first = false;
        if let Some(w) = wait.filter(|w| !w.is_zero()) {
            tokio::time::sleep(w).await;
        }
        if is_content {
            st.content_sent += 1;
        }
        Some((Ok::<_, std::io::Error>(bytes), st))
    });
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
