use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde_json::{Value, json};

use crate::directives::{Directives, extract, resolve};
use crate::{DEFAULT_TOKENS, prompt_tokens, reply_tokens};

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
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    faults: AtomicU64,
    ids: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> MockStats {
        MockStats {
            requests: self.requests.load(Ordering::SeqCst),
            completed: self.completed.load(Ordering::SeqCst),
            cancelled: self.cancelled.load(Ordering::SeqCst),
            faults: self.faults.load(Ordering::SeqCst),
        }
    }
}

struct Shared {
    opts: MockOptions,
    counters: Counters,
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
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .route("/mock/stats", get(stats))
            .route("/mock/reset", post(reset))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(shared.clone());
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

    /// `http://ADDR/v1`, the base URL a provider entry points at.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The counters now.
    pub fn stats(&self) -> MockStats {
        self.shared.counters.snapshot()
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

async fn stats(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(s.counters.snapshot()).into_response()
}

async fn reset(State(s): State<Arc<Shared>>) -> StatusCode {
    let c = &s.counters;
    for a in [&c.requests, &c.completed, &c.cancelled, &c.faults] {
        a.store(0, Ordering::SeqCst);
    }
    StatusCode::NO_CONTENT
}

async fn models() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]}),
    )
}

fn json_response(status: StatusCode, v: &Value) -> Response {
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

fn error(status: u16, message: &str, param: Option<&str>, code: Option<&str>) -> Response {
    let kind = match status {
        429 => "requests",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
    )
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

fn message_text(m: &Value) -> String {
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// What to answer, decided from the request.
struct Plan {
    id: String,
    created: u64,
    model: String,
    prompt: String,
    n: usize,
    prompt_tokens: u64,
    d: Directives,
    include_usage: bool,
}

impl Plan {
    fn tokens(&self) -> usize {
        self.d.tokens.unwrap_or(DEFAULT_TOKENS)
    }

    fn usage(&self) -> Value {
        let completion = if self.d.tool_call.is_some() {
            self.tool_arguments().len().div_ceil(4) as u64
        } else {
            (self.tokens() * self.n) as u64
        };
        // OpenAI's convention: prompt_tokens includes the cached ones.
        let cached = self.d.cached_tokens.unwrap_or(0).min(self.prompt_tokens);
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": 0}
        })
    }

    fn tool_arguments(&self) -> String {
        let query: Vec<&str> = self.prompt.split_whitespace().take(3).collect();
        json!({"query": query.join(" ")}).to_string()
    }

    fn tool_call_id(&self) -> String {
        format!("call_mock_{}", &self.id["chatcmpl-mock-".len()..])
    }
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.counters.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(key) = &shared.opts.api_key {
        let ok = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            == Some(key.as_str());
        if !ok {
            return error(
                401,
                "Incorrect API key provided",
                None,
                Some("invalid_api_key"),
            );
        }
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(
            400,
            "We could not parse the JSON body of your request.",
            None,
            None,
        );
    };
    let Some(model) = req["model"].as_str() else {
        return error(
            400,
            "you must provide a model parameter",
            Some("model"),
            None,
        );
    };
    let Some(messages) = req["messages"].as_array().filter(|m| !m.is_empty()) else {
        return error(
            400,
            "'messages' must be a non-empty array",
            Some("messages"),
            None,
        );
    };
    let texts: Vec<String> = messages.iter().map(message_text).collect();
    let last_user = messages
        .iter()
        .rposition(|m| m["role"] == "user")
        .map(|i| texts[i].as_str())
        .unwrap_or("");
    let (prompt, blocks) = extract(last_user);
    let header_directives = headers.get("x-mock").and_then(|v| v.to_str().ok());
    let d = match resolve(
        &shared.opts.defaults,
        header_directives,
        &blocks,
        &shared.opts.name,
    ) {
        Ok(d) => d,
        Err(e) => return error(400, &e.0, None, None),
    };
    let n = req["n"].as_u64().unwrap_or(1);
    if !(1..=8).contains(&n) {
        return error(400, "the mock supports n from 1 to 8", Some("n"), None);
    }
    let plan = Plan {
        id: format!(
            "chatcmpl-mock-{}",
            shared.counters.ids.fetch_add(1, Ordering::Relaxed)
        ),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        model: model.to_owned(),
        prompt,
        n: n as usize,
        prompt_tokens: prompt_tokens(&texts),
        include_usage: req["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false),
        d,
    };
    let outcome = Outcome::new(&shared);
    if plan.d.hang {
        shared.counters.faults.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    if let Some(status) = plan.d.status {
        shared.counters.faults.fetch_add(1, Ordering::SeqCst);
        if let Some(t) = plan.d.ttft {
            tokio::time::sleep(t).await;
        }
        let code = (status == 429).then_some("rate_limit_exceeded");
        let mut resp = error(status, &format!("mock fault: status {status}"), None, code);
        if let Some(secs) = plan.d.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        outcome.complete();
        return resp;
    }
    if req["stream"].as_bool().unwrap_or(false) {
        return stream(shared, plan, outcome);
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
    let choices: Vec<Value> = (0..plan.n)
        .map(|i| {
            if let Some(tool) = &plan.d.tool_call {
                json!({"index": i, "message": {"role": "assistant", "content": null, "refusal": null,
                    "tool_calls": [{"id": plan.tool_call_id(), "type": "function",
                        "function": {"name": tool, "arguments": plan.tool_arguments()}}]},
                    "logprobs": null, "finish_reason": "tool_calls"})
            } else {
                json!({"index": i, "message": {"role": "assistant",
                    "content": reply_tokens(&plan.prompt, plan.tokens(), i).concat(), "refusal": null},
                    "logprobs": null, "finish_reason": "stop"})
            }
        })
        .collect();
    let resp = json_response(
        StatusCode::OK,
        &json!({"id": plan.id, "object": "chat.completion", "created": plan.created, "model": plan.model,
            "choices": choices, "usage": plan.usage(), "system_fingerprint": "fp_mock"}),
    );
    outcome.complete();
    resp
}

fn chunk(plan: &Plan, choices: Value) -> Bytes {
    let mut v = json!({"id": plan.id, "object": "chat.completion.chunk", "created": plan.created,
        "model": plan.model, "system_fingerprint": "fp_mock", "choices": choices});
    if plan.include_usage {
        v["usage"] = Value::Null;
    }
    sse(&v)
}

fn sse(v: &Value) -> Bytes {
    let mut buf = b"data: ".to_vec();
    let _ = serde_json::to_writer(&mut buf, v);
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

/// Every event of a streamed answer, in order; the bool marks content chunks (for cut_after).
fn events(plan: &Plan) -> Vec<(Bytes, bool)> {
    let mut out = Vec::new();
    for i in 0..plan.n {
        if let Some(tool) = &plan.d.tool_call {
            out.push((chunk(plan, json!([{"index": i, "delta": {"role": "assistant", "content": null,
                "tool_calls": [{"index": 0, "id": plan.tool_call_id(), "type": "function",
                    "function": {"name": tool, "arguments": ""}}]}, "logprobs": null, "finish_reason": null}])), false));
            let args: Vec<char> = plan.tool_arguments().chars().collect();
            let piece = args.len().div_ceil(3).max(1);
            for part in args.chunks(piece) {
                let frag: String = part.iter().collect();
                out.push((
                    chunk(
                        plan,
                        json!([{"index": i, "delta": {"tool_calls": [{"index": 0,
                    "function": {"arguments": frag}}]}, "logprobs": null, "finish_reason": null}]),
                    ),
                    true,
                ));
            }
            out.push((chunk(plan, json!([{"index": i, "delta": {}, "logprobs": null, "finish_reason": "tool_calls"}])), false));
        } else {
            out.push((
                chunk(
                    plan,
                    json!([{"index": i, "delta": {"role": "assistant", "content": ""},
                "logprobs": null, "finish_reason": null}]),
                ),
                false,
            ));
            for t in reply_tokens(&plan.prompt, plan.tokens(), i) {
                out.push((chunk(plan, json!([{"index": i, "delta": {"content": t}, "logprobs": null, "finish_reason": null}])), true));
            }
            out.push((
                chunk(
                    plan,
                    json!([{"index": i, "delta": {}, "logprobs": null, "finish_reason": "stop"}]),
                ),
                false,
            ));
        }
    }
    if plan.include_usage {
        out.push((
            sse(&json!({"id": plan.id, "object": "chat.completion.chunk", "created": plan.created,
                "model": plan.model, "system_fingerprint": "fp_mock", "choices": [], "usage": plan.usage()})),
            false,
        ));
    }
    out.push((Bytes::from_static(b"data: [DONE]\n\n"), false));
    out
}

struct StreamState {
    events: std::vec::IntoIter<(Bytes, bool)>,
    ttft: Option<Duration>,
    delay: Option<Duration>,
    cut_after: Option<usize>,
    content_sent: usize,
    first: bool,
    outcome: Option<Outcome>,
    shared: Arc<Shared>,
}

fn stream(shared: Arc<Shared>, plan: Plan, outcome: Outcome) -> Response {
    let state = StreamState {
        events: events(&plan).into_iter(),
        ttft: plan.d.ttft,
        delay: plan.d.delay,
        cut_after: plan.d.cut_after,
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
