//! The wire dialects the mock speaks: OpenAI Chat Completions, Anthropic Messages,
//! Gemini generateContent and Cohere v2 chat. Each parses its request into the
//! few things the mock needs, and renders answers, streams and errors in its own
//! format, written from the providers' public documentation.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::server::{Plan, json_response};

/// A wire dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI Chat Completions.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini.
    Gemini,
    /// Cohere v2 chat.
    Cohere,
}

/// Gemini puts the model and the method in the path and may put the key in the query.
pub struct GeminiTarget {
    /// `<model>:generateContent` or `<model>:streamGenerateContent`.
    pub action: String,
    /// `?key=`.
    pub key: Option<String>,
}

/// What the mock needs from a request.
pub struct Parsed {
    pub model: String,
    /// Every message's text, for the prompt token count.
    pub texts: Vec<String>,
    /// The last user message's text (where directives live).
    pub last_user: String,
    /// A final assistant message to continue (Anthropic's prefill; vLLM's with
    /// `continue_final_message`).
    pub prefill: Option<String>,
    pub stream: bool,
    pub n: usize,
    pub include_usage: bool,
    /// Anthropic prompt caching: (a hash of, mock tokens in) the prompt up to
    /// the last `cache_control` breakpoint, when there is one.
    pub cache_prefix: Option<(u64, u64)>,
}

/// Anthropic's cache prefix: tools, then system, then messages, up to and
/// including the last block with `cache_control`; its hash and its tokens as
/// [`crate::prompt_tokens`] counts them (words, plus 3 per system or message
/// entry reached).
fn cache_prefix(req: &Value) -> Option<(u64, u64)> {
    use std::hash::{Hash, Hasher};
    let blocks = |v: &Value| -> Vec<Value> {
        match v {
            Value::Array(b) => b.clone(),
            Value::Null => Vec::new(),
            other => vec![json!({"type": "text", "text": other})],
        }
    };
    // (entry index, block) in cache order; tools are entry 0, system 1.
    let mut order: Vec<(usize, Value)> = Vec::new();
    order.extend(blocks(&req["tools"]).into_iter().map(|b| (0, b)));
    order.extend(blocks(&req["system"]).into_iter().map(|b| (1, b)));
    for (i, m) in req["messages"].as_array().into_iter().flatten().enumerate() {
        order.extend(blocks(&m["content"]).into_iter().map(|b| (i + 2, b)));
    }
    let last = order
        .iter()
        .rposition(|(_, b)| !b["cache_control"].is_null())?;
    let prefix = &order[..=last];
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut words = 0u64;
    let mut entries = std::collections::BTreeSet::new();
    for (entry, b) in prefix {
        b.to_string().hash(&mut h);
        if *entry > 0 {
            entries.insert(*entry);
            words += text_of(&Value::Array(vec![b.clone()]))
                .split_whitespace()
                .count() as u64;
        }
    }
    Some((h.finish(), words + 3 * entries.len() as u64))
}

/// What the mock needs from an embeddings request.
pub struct EmbedParsed {
    pub model: String,
    pub texts: Vec<String>,
    pub dimensions: usize,
}

/// The mock's embedding of `text`: `dims` deterministic values in [-1, 1).
pub fn vector(text: &str, dims: usize) -> Vec<f32> {
    (0..dims)
        .map(|i| {
            let h = crate::seed(text, i);
            ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// What the mock needs from a rerank request.
pub struct RerankParsed {
    pub model: String,
    pub query: String,
    pub documents: Vec<String>,
    pub top_n: Option<usize>,
}

/// The mock's relevance of `doc` to `query`, in [0, 1): the share of the
/// query's words the document contains, plus a deterministic hair (at most
/// 0.001) that orders ties.
pub fn relevance(query: &str, doc: &str) -> f64 {
    let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
    let doc = doc.to_lowercase();
    let have = words.iter().filter(|w| doc.contains(w.as_str())).count();
    let share = have as f64 / (words.len().max(1) as f64 + 0.01);
    let hair = (crate::seed(&doc, 0) >> 54) as f64 / (1u64 << 10) as f64 / 1000.0;
    (share * 0.998 + hair).min(0.999_999)
}

/// Text of a content value: a string, or the text of its text blocks / parts
/// (tool results included).
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.clone()),
                _ if p["type"] == "text" || p.get("text").is_some() && p.get("type").is_none() => {
                    p["text"].as_str().map(str::to_owned)
                }
                _ if p["type"] == "tool_result" => Some(text_of(&p["content"])),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn sse_event(name: Option<&str>, v: &Value) -> Bytes {
    let mut buf = Vec::with_capacity(128);
    if let Some(n) = name {
        buf.extend_from_slice(b"event: ");
        buf.extend_from_slice(n.as_bytes());
        buf.push(b'\n');
    }
    buf.extend_from_slice(b"data: ");
    let _ = serde_json::to_writer(&mut buf, v);
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

/// Splits `s` into about three pieces on char boundaries (streamed tool arguments).
fn pieces(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let size = chars.len().div_ceil(3).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

impl Dialect {
    pub fn id_prefix(self) -> &'static str {
        match self {
            Dialect::OpenAi => "chatcmpl-",
            Dialect::Anthropic => "msg_",
            Dialect::Gemini => "resp-",
            Dialect::Cohere => "cohere-",
        }
    }

    pub fn call_prefix(self) -> &'static str {
        match self {
            Dialect::Anthropic => "toolu_",
            _ => "call_",
        }
    }

    pub fn authorized(self, headers: &HeaderMap, gemini: Option<&GeminiTarget>, key: &str) -> bool {
        let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        match self {
            Dialect::OpenAi | Dialect::Cohere => {
                h(header::AUTHORIZATION.as_str()).and_then(|v| v.strip_prefix("Bearer "))
                    == Some(key)
            }
            Dialect::Anthropic => h("x-api-key") == Some(key),
            Dialect::Gemini => {
                h("x-goog-api-key") == Some(key)
                    || gemini.and_then(|g| g.key.as_deref()) == Some(key)
            }
        }
    }

    pub fn parse(self, req: &Value, gemini: Option<&GeminiTarget>) -> Result<Parsed, String> {
        match self {
            Dialect::OpenAi | Dialect::Cohere => {
                let model = req["model"]
                    .as_str()
                    .ok_or("you must provide a model parameter")?;
                let messages = req["messages"]
                    .as_array()
                    .filter(|m| !m.is_empty())
                    .ok_or("'messages' must be a non-empty array")?;
                let texts: Vec<String> = messages.iter().map(|m| text_of(&m["content"])).collect();
                let last_user = messages
                    .iter()
                    .rposition(|m| m["role"] == "user")
                    .map(|i| texts[i].clone())
                    .unwrap_or_default();
                let prefill = (self == Dialect::OpenAi
                    && req["continue_final_message"] == true
                    && messages.last().is_some_and(|m| m["role"] == "assistant"))
                .then(|| texts[texts.len() - 1].clone());
                Ok(Parsed {
                    model: model.to_owned(),
                    texts,
                    last_user,
                    prefill,
                    stream: req["stream"].as_bool().unwrap_or(false),
                    n: if self == Dialect::OpenAi {
                        req["n"].as_u64().unwrap_or(1) as usize
                    } else {
                        1
                    },
                    include_usage: self == Dialect::Cohere
                        || req["stream_options"]["include_usage"]
                            .as_bool()
                            .unwrap_or(false),
                    cache_prefix: None,
                })
            }
            Dialect::Anthropic => {
                let model = req["model"].as_str().ok_or("model: Field required")?;
                if !req["max_tokens"].is_u64() {
                    return Err("max_tokens: Field required".into());
                }
                let messages = req["messages"]
                    .as_array()
                    .filter(|m| !m.is_empty())
                    .ok_or("messages: at least one message is required")?;
                let mut texts: Vec<String> =
                    messages.iter().map(|m| text_of(&m["content"])).collect();
                let last_user = messages
                    .iter()
                    .rposition(|m| m["role"] == "user")
                    .map(|i| {
                        text_of(&Value::Array(
                            messages[i]["content"]
                                .as_array()
                                .map(|a| {
                                    a.iter().filter(|b| b["type"] == "text").cloned().collect()
                                })
                                .unwrap_or_else(|| vec![messages[i]["content"].clone()]),
                        ))
                    })
                    .unwrap_or_default();
                let prefill = messages
                    .last()
                    .filter(|m| m["role"] == "assistant")
                    .map(|m| text_of(&m["content"]));
                if prefill.as_deref().is_some_and(|p| p.trim_end() != p) {
                    return Err(
                        "messages: final assistant content cannot end with trailing whitespace"
                            .into(),
                    );
                }
                if !req["system"].is_null() {
                    texts.push(text_of(&req["system"]));
                }
                Ok(Parsed {
                    model: model.to_owned(),
                    texts,
                    last_user,
                    prefill,
                    stream: req["stream"].as_bool().unwrap_or(false),
                    n: 1,
                    include_usage: true,
                    cache_prefix: cache_prefix(req),
                })
            }
            Dialect::Gemini => {
                let target = gemini.ok_or("no model in the path")?;
                let (model, method) = target
                    .action
                    .split_once(':')
                    .ok_or("the path must be models/<model>:generateContent")?;
                let stream = match method {
                    "generateContent" => false,
                    "streamGenerateContent" => true,
                    other => return Err(format!("unknown method {other}")),
                };
                let contents = req["contents"]
                    .as_array()
                    .filter(|c| !c.is_empty())
                    .ok_or("* GenerateContentRequest.contents: contents is not specified")?;
                let parts_text = |c: &Value| text_of(&c["parts"]);
                let mut texts: Vec<String> = contents.iter().map(parts_text).collect();
                let last_user = contents
                    .iter()
                    .rposition(|c| c["role"] == "user" || c["role"].is_null())
                    .map(|i| parts_text(&contents[i]))
                    .unwrap_or_default();
                if !req["systemInstruction"].is_null() {
                    texts.push(parts_text(&req["systemInstruction"]));
                }
                Ok(Parsed {
                    model: model.to_owned(),
                    texts,
                    last_user,
                    prefill: None,
                    stream,
                    n: 1,
                    include_usage: true,
                    cache_prefix: None,
                })
            }
        }
    }

    /// Parses an embeddings request (OpenAI `/v1/embeddings`, Gemini
    /// `batchEmbedContents`, Cohere `/v2/embed`).
    pub fn parse_embed(
        self,
        req: &Value,
        gemini: Option<&GeminiTarget>,
    ) -> Result<EmbedParsed, String> {
        let strings = |v: &Value| -> Option<Vec<String>> {
            match v {
                Value::String(s) => Some(vec![s.clone()]),
                Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_owned)).collect(),
                _ => None,
            }
        };
        let dims = |v: &Value| v.as_u64().map_or(8, |d| d.clamp(1, 4096) as usize);
        match self {
            Dialect::OpenAi => Ok(EmbedParsed {
                model: req["model"]
                    .as_str()
                    .ok_or("you must provide a model parameter")?
                    .to_owned(),
                texts: strings(&req["input"])
                    // Token arrays: embed their decimal text.
                    .or_else(|| Some(vec![req["input"].to_string()]))
                    .ok_or("input is required")?,
                dimensions: dims(&req["dimensions"]),
            }),
            Dialect::Cohere => Ok(EmbedParsed {
                model: req["model"].as_str().ok_or("model is required")?.to_owned(),
                texts: strings(&req["texts"]).ok_or("texts is required")?,
                dimensions: dims(&req["output_dimension"]),
            }),
            Dialect::Gemini => {
                let target = gemini.ok_or("no model in the path")?;
                let model = target.action.split(':').next().unwrap_or("").to_owned();
                let requests = req["requests"].as_array().ok_or("requests is required")?;
                Ok(EmbedParsed {
                    model,
                    texts: requests
                        .iter()
                        .map(|r| text_of(&r["content"]["parts"]))
                        .collect(),
                    dimensions: requests
                        .first()
                        .map_or(8, |r| dims(&r["outputDimensionality"])),
                })
            }
            Dialect::Anthropic => Err("Anthropic has no embeddings API".into()),
        }
    }

    /// Parses a rerank request (Cohere `/v2/rerank`; Jina's shape on
    /// `/v1/rerank` for OpenAI-compatible servers).
    pub fn parse_rerank(self, req: &Value) -> Result<RerankParsed, String> {
        let documents = req["documents"]
            .as_array()
            .ok_or("documents is required")?
            .iter()
            .map(|d| {
                d.as_str()
                    .or_else(|| d["text"].as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| "each document must be a string".to_owned())
            })
            .collect::<Result<Vec<_>, _>>()?;
        match self {
            Dialect::OpenAi | Dialect::Cohere => Ok(RerankParsed {
                model: req["model"].as_str().ok_or("model is required")?.to_owned(),
                query: req["query"].as_str().ok_or("query is required")?.to_owned(),
                documents,
                top_n: req["top_n"].as_u64().map(|n| n as usize),
            }),
            _ => Err("this dialect has no rerank API".into()),
        }
    }

    /// A rerank answer: documents best first (Cohere bills one search unit
    /// per 100 documents; Jina's shape counts tokens).
    pub fn rerank_answer(self, p: &RerankParsed) -> Value {
        let mut ranked: Vec<(usize, f64)> = p
            .documents
            .iter()
            .enumerate()
            .map(|(i, d)| (i, relevance(&p.query, d)))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(n) = p.top_n {
            ranked.truncate(n);
        }
        let results: Vec<Value> = ranked
            .iter()
            .map(|(i, s)| json!({"index": i, "relevance_score": s}))
            .collect();
        let query_words = p.query.split_whitespace().count() as u64;
        let tokens: u64 = p
            .documents
            .iter()
            .map(|d| query_words + d.split_whitespace().count() as u64)
            .sum();
        match self {
            Dialect::Cohere => json!({"id": "rerank-mock", "results": results,
                "meta": {"api_version": {"version": "2"},
                    "billed_units": {"search_units": p.documents.len().div_ceil(100)}}}),
            _ => json!({"id": "rerank-mock", "model": p.model, "results": results,
                "usage": {"total_tokens": tokens}}),
        }
    }

    /// An embeddings answer for `texts`.
    pub fn embed_answer(self, p: &EmbedParsed) -> Value {
        let vectors: Vec<Vec<f32>> = p.texts.iter().map(|t| vector(t, p.dimensions)).collect();
        let tokens: u64 = p
            .texts
            .iter()
            .map(|t| t.split_whitespace().count() as u64)
            .sum();
        match self {
            Dialect::Gemini => {
                json!({"embeddings": vectors.iter().map(|v| json!({"values": v})).collect::<Vec<_>>()})
            }
            Dialect::Cohere => {
                json!({"id": "embed-mock", "embeddings": {"float": vectors}, "texts": p.texts,
                "meta": {"billed_units": {"input_tokens": tokens}}})
            }
            _ => json!({"object": "list", "model": p.model, "data": vectors.iter().enumerate()
                    .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v})).collect::<Vec<_>>(),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
        }
    }

    /// A plain error in the dialect's format.
    pub fn error(self, status: u16, message: &str, code: Option<&str>) -> Response {
        let st = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = match self {
            Dialect::OpenAi => {
                let kind = match status {
                    429 => "requests",
                    500..=599 => "server_error",
                    _ => "invalid_request_error",
                };
                json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
            }
            Dialect::Anthropic => {
                let kind = match status {
                    400 => "invalid_request_error",
                    401 => "authentication_error",
                    403 => "permission_error",
                    404 => "not_found_error",
                    413 => "request_too_large",
                    429 => "rate_limit_error",
                    529 => "overloaded_error",
                    _ => "api_error",
                };
                json!({"type": "error", "error": {"type": kind, "message": message}})
            }
            Dialect::Gemini => {
                let kind = match status {
                    400 => "INVALID_ARGUMENT",
                    401 => "UNAUTHENTICATED",
                    403 => "PERMISSION_DENIED",
                    404 => "NOT_FOUND",
                    429 => "RESOURCE_EXHAUSTED",
                    503 => "UNAVAILABLE",
                    504 => "DEADLINE_EXCEEDED",
                    _ => "INTERNAL",
                };
                json!({"error": {"code": status, "message": message, "status": kind}})
            }
            Dialect::Cohere => json!({"message": message}),
        };
        json_response(st, &body)
    }

    /// The status of an `error=` directive without `status=`.
    pub fn error_status(self, kind: Option<&str>) -> Option<u16> {
        Some(match kind? {
            "rate_limit" => 429,
            "overloaded" if self == Dialect::Anthropic => 529,
            "overloaded" => 503,
            _ => 400,
        })
    }

    /// A fault answer: `kind` described the way this dialect describes it.
    pub fn fault(self, status: u16, kind: Option<&str>, prompt_tokens: u64) -> Response {
        let (message, code) = match (self, kind) {
            (Dialect::OpenAi, Some("context_length")) => (
                format!("This model's maximum context length is 8 tokens. However, your messages resulted in {prompt_tokens} tokens."),
                Some("context_length_exceeded"),
            ),
            (Dialect::Anthropic, Some("context_length")) => {
                (format!("prompt is too long: {prompt_tokens} tokens > 8 maximum"), None)
            }
            (Dialect::Gemini, Some("context_length")) => (
                format!("The input token count ({prompt_tokens}) exceeds the maximum number of tokens allowed (8)."),
                None,
            ),
            (Dialect::Cohere, Some("context_length")) => (
                format!("too many tokens: total number of tokens in the prompt cannot exceed 8 - received {prompt_tokens}"),
                None,
            ),
            (Dialect::OpenAi, Some("content_filter")) => (
                "The response was filtered due to the prompt triggering the content management policy.".into(),
                Some("content_filter"),
            ),
            (_, Some("content_filter")) => (
                "mock fault: the request was blocked by the provider's safety / content policy.".into(),
                None,
            ),
            (_, Some("overloaded")) => ("mock fault: the model is overloaded".into(), None),
            (Dialect::OpenAi, Some("rate_limit")) | (Dialect::OpenAi, None) if status == 429 => {
                (format!("mock fault: status {status}"), Some("rate_limit_exceeded"))
            }
            _ => (format!("mock fault: status {status}"), None),
        };
        self.error(status, &message, code)
    }

    /// A whole (non-streamed) answer.
    pub fn answer(self, plan: &Plan) -> Value {
        let tool = plan.d.tool_call.as_deref();
        let (cached, write) = plan.cache();
        let completion = plan.completion_tokens();
        match self {
            Dialect::OpenAi => {
                let choices: Vec<Value> = (0..plan.n)
                    .map(|i| match tool {
                        Some(tool) => json!({"index": i, "message": {"role": "assistant", "content": null, "refusal": null,
                            "tool_calls": [{"id": plan.tool_call_id(), "type": "function",
                                "function": {"name": tool, "arguments": plan.tool_arguments()}}]},
                            "logprobs": null, "finish_reason": "tool_calls"}),
                        None => json!({"index": i, "message": {"role": "assistant",
                            "content": plan.text(i).concat(), "refusal": null},
                            "logprobs": null, "finish_reason": plan.d.finish.as_deref().unwrap_or("stop")}),
                    })
                    .collect();
                json!({"id": plan.id(), "object": "chat.completion", "created": plan.created, "model": plan.model,
                    "choices": choices, "usage": openai_usage(plan), "system_fingerprint": "fp_mock"})
            }
            Dialect::Anthropic => {
                let content = match tool {
                    Some(tool) => {
                        json!([{"type": "tool_use", "id": plan.tool_call_id(), "name": tool,
                        "input": serde_json::from_str::<Value>(&plan.tool_arguments()).unwrap_or_default()}])
                    }
                    None => json!([{"type": "text", "text": plan.text(0).concat()}]),
                };
                json!({"id": plan.id(), "type": "message", "role": "assistant", "model": plan.model,
                    "content": content, "stop_reason": if tool.is_some() { "tool_use" } else { "end_turn" },
                    "stop_sequence": null,
                    "usage": {"input_tokens": plan.prompt_tokens - cached - write, "output_tokens": completion,
                        "cache_read_input_tokens": cached, "cache_creation_input_tokens": write}})
            }
            Dialect::Gemini => {
                let parts = match tool {
                    Some(tool) => json!([{"functionCall": {"name": tool,
                        "args": serde_json::from_str::<Value>(&plan.tool_arguments()).unwrap_or_default()}}]),
                    None => json!([{"text": plan.text(0).concat()}]),
                };
                json!({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
                    "usageMetadata": gemini_usage(plan), "modelVersion": plan.model, "responseId": plan.id()})
            }
            Dialect::Cohere => {
                let (message, reason) = match tool {
                    Some(tool) => (
                        json!({"role": "assistant", "tool_plan": "I will call the tool.",
                            "tool_calls": [{"id": plan.tool_call_id(), "type": "function",
                                "function": {"name": tool, "arguments": plan.tool_arguments()}}]}),
                        "TOOL_CALL",
                    ),
                    None => (
                        json!({"role": "assistant", "content": [{"type": "text", "text": plan.text(0).concat()}]}),
                        "COMPLETE",
                    ),
                };
                json!({"id": plan.id(), "finish_reason": reason, "message": message, "usage": cohere_usage(plan)})
            }
        }
    }

    /// Every event of a streamed answer, in order; the bool marks content events
    /// (counted by `cut_after`).
    pub fn events(self, plan: &Plan) -> Vec<(Bytes, bool)> {
        match self {
            Dialect::OpenAi => openai_events(plan),
            Dialect::Anthropic => anthropic_events(plan),
            Dialect::Gemini => gemini_events(plan),
            Dialect::Cohere => cohere_events(plan),
        }
    }
}

fn openai_usage(plan: &Plan) -> Value {
    // OpenAI's convention: prompt_tokens includes the cached ones.
    let (cached, _) = plan.cache();
    let completion = plan.completion_tokens();
    json!({
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": plan.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": 0}
    })
}

fn gemini_usage(plan: &Plan) -> Value {
    let (cached, _) = plan.cache();
    let completion = plan.completion_tokens();
    json!({"promptTokenCount": plan.prompt_tokens, "candidatesTokenCount": completion,
        "totalTokenCount": plan.prompt_tokens + completion, "cachedContentTokenCount": cached})
}

fn cohere_usage(plan: &Plan) -> Value {
    let completion = plan.completion_tokens();
    json!({"billed_units": {"input_tokens": plan.prompt_tokens, "output_tokens": completion},
        "tokens": {"input_tokens": plan.prompt_tokens + 50, "output_tokens": completion}})
}

fn openai_events(plan: &Plan) -> Vec<(Bytes, bool)> {
    let chunk = |choices: Value| {
        let mut v = json!({"id": plan.id(), "object": "chat.completion.chunk", "created": plan.created,
            "model": plan.model, "system_fingerprint": "fp_mock", "choices": choices});
        if plan.include_usage {
            v["usage"] = Value::Null;
        }
        sse_event(None, &v)
    };
    let mut out = Vec::new();
    for i in 0..plan.n {
        if let Some(tool) = &plan.d.tool_call {
            out.push((chunk(json!([{"index": i, "delta": {"role": "assistant", "content": null,
                "tool_calls": [{"index": 0, "id": plan.tool_call_id(), "type": "function",
                    "function": {"name": tool, "arguments": ""}}]}, "logprobs": null, "finish_reason": null}])), false));
            for frag in pieces(&plan.tool_arguments()) {
                out.push((
                    chunk(json!([{"index": i, "delta": {"tool_calls": [{"index": 0,
                    "function": {"arguments": frag}}]}, "logprobs": null, "finish_reason": null}])),
                    true,
                ));
            }
            out.push((chunk(json!([{"index": i, "delta": {}, "logprobs": null, "finish_reason": "tool_calls"}])), false));
        } else {
            out.push((
                chunk(
                    json!([{"index": i, "delta": {"role": "assistant", "content": ""},
                "logprobs": null, "finish_reason": null}]),
                ),
                false,
            ));
            for t in plan.text(i) {
                out.push((chunk(json!([{"index": i, "delta": {"content": t}, "logprobs": null, "finish_reason": null}])), true));
            }
            out.push((
                chunk(json!([{"index": i, "delta": {}, "logprobs": null,
                        "finish_reason": plan.d.finish.as_deref().unwrap_or("stop")}])),
                false,
            ));
        }
    }
    if plan.include_usage {
        out.push((
            sse_event(None, &json!({"id": plan.id(), "object": "chat.completion.chunk", "created": plan.created,
                "model": plan.model, "system_fingerprint": "fp_mock", "choices": [], "usage": openai_usage(plan)})),
            false,
        ));
    }
    out.push((Bytes::from_static(b"data: [DONE]\n\n"), false));
    out
}

fn anthropic_events(plan: &Plan) -> Vec<(Bytes, bool)> {
    let (cached, write) = plan.cache();
    let ev = |name: &str, v: Value| sse_event(Some(name), &v);
    let mut out = vec![
        (
            ev(
                "message_start",
                json!({"type": "message_start", "message": {"id": plan.id(), "type": "message",
                "role": "assistant", "model": plan.model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": plan.prompt_tokens - cached - write, "output_tokens": 1,
                    "cache_read_input_tokens": cached, "cache_creation_input_tokens": write}}}),
            ),
            false,
        ),
        (ev("ping", json!({"type": "ping"})), false),
    ];
    let stop = if let Some(tool) = &plan.d.tool_call {
        out.push((ev("content_block_start", json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": plan.tool_call_id(), "name": tool, "input": {}}})), false));
        for frag in pieces(&plan.tool_arguments()) {
            out.push((
                ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": frag}}),
                ),
                true,
            ));
        }
        "tool_use"
    } else {
        out.push((
            ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
            ),
            false,
        ));
        for t in plan.text(0) {
            out.push((
                ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": t}}),
                ),
                true,
            ));
        }
        "end_turn"
    };
    out.push((
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        false,
    ));
    out.push((
        ev(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
        "usage": {"output_tokens": plan.completion_tokens()}}),
        ),
        false,
    ));
    out.push((ev("message_stop", json!({"type": "message_stop"})), false));
    out
}

fn gemini_events(plan: &Plan) -> Vec<(Bytes, bool)> {
    let event = |parts: Value, last: bool| {
        let mut cand = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        let mut v = json!({"modelVersion": plan.model, "responseId": plan.id()});
        if last {
            cand["finishReason"] = json!("STOP");
            v["usageMetadata"] = gemini_usage(plan);
        }
        v["candidates"] = json!([cand]);
        (sse_event(None, &v), true)
    };
    if let Some(tool) = &plan.d.tool_call {
        let args = serde_json::from_str::<Value>(&plan.tool_arguments()).unwrap_or_default();
        return vec![event(
            json!([{"functionCall": {"name": tool, "args": args}}]),
            true,
        )];
    }
    let tokens = plan.text(0);
    if tokens.is_empty() {
        return vec![event(json!([{"text": ""}]), true)];
    }
    let last = tokens.len() - 1;
    tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| event(json!([{"text": t}]), i == last))
        .collect()
}

fn cohere_events(plan: &Plan) -> Vec<(Bytes, bool)> {
    let ev = |name: &str, v: Value| sse_event(Some(name), &v);
    let mut out = vec![(
        ev(
            "message-start",
            json!({"id": plan.id(), "type": "message-start", "delta": {"message": {
            "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}),
        ),
        false,
    )];
    let reason = if let Some(tool) = &plan.d.tool_call {
        out.push((ev("tool-plan-delta", json!({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will call the tool."}}})), false));
        out.push((ev("tool-call-start", json!({"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {
            "id": plan.tool_call_id(), "type": "function", "function": {"name": tool, "arguments": ""}}}}})), false));
        for frag in pieces(&plan.tool_arguments()) {
            out.push((
                ev(
                    "tool-call-delta",
                    json!({"type": "tool-call-delta", "index": 0, "delta": {"message": {
                "tool_calls": {"function": {"arguments": frag}}}}}),
                ),
                true,
            ));
        }
        out.push((
            ev(
                "tool-call-end",
                json!({"type": "tool-call-end", "index": 0}),
            ),
            false,
        ));
        "TOOL_CALL"
    } else {
        out.push((ev("content-start", json!({"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}})), false));
        for t in plan.text(0) {
            out.push((ev("content-delta", json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": t}}}})), true));
        }
        out.push((
            ev("content-end", json!({"type": "content-end", "index": 0})),
            false,
        ));
        "COMPLETE"
    };
    out.push((ev("message-end", json!({"type": "message-end", "delta": {"finish_reason": reason, "usage": cohere_usage(plan)}})), false));
    out
}
