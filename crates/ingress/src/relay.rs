//! From reply frames to the client: sequencing, deadline, cancel on abandon,
//! aggregation (non-streamed) and OpenAI SSE encoding (streamed).

use std::io::Write;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use sy_bus::{Bus, ReplyReceiver};
use sy_protocol::chat::{ChoiceDelta, Delta, Role, Usage};
use sy_protocol::{Cancel, CancelReason, ErrorCode, ReplyFrame, StartInfo, now_unix_ms};
use tokio::time::Instant;
use uuid::Uuid;

use crate::ApiError;

/// Usage as OpenAI clients know it: without `cache_write_tokens`, the
/// canonical model's note of Anthropic's cache writes (inside `prompt_tokens`;
/// accounting prices them, OpenAI's API has no such field).
fn openai_usage(u: &Usage) -> std::borrow::Cow<'_, Usage> {
    match &u.prompt_tokens_details {
        Some(d) if d.contains_key("cache_write_tokens") => {
            let mut u = u.clone();
            if let Some(d) = &mut u.prompt_tokens_details {
                d.remove("cache_write_tokens");
            }
            std::borrow::Cow::Owned(u)
        }
        _ => std::borrow::Cow::Borrowed(u),
    }
}

/// A request whose frames are awaited. Dropping it before the final frame (the
/// client went away, or the ingress gave up) tells the workers to stop.
pub struct Pending {
    rx: ReplyReceiver,
    next_seq: u32,
    deadline: Instant,
    bus: Bus,
    request_id: Uuid,
    finished: bool,
    cancel_reason: CancelReason,
}

impl Pending {
    /// Starts waiting; `rx` must be registered before the request was published.
    pub fn new(rx: ReplyReceiver, bus: Bus, deadline: Instant) -> Self {
        Pending {
            request_id: rx.request_id(),
            rx,
            next_seq: 0,
            deadline,
            bus,
            finished: false,
            cancel_reason: CancelReason::ClientDisconnected,
        }
    }

    /// The next frame in order. A lost or reordered frame, a cut-off receiver
    /// or the deadline end the request with an error (and a cancel).
    pub async fn next(&mut self) -> Result<ReplyFrame, ApiError> {
        let bytes = match tokio::time::timeout_at(self.deadline, self.rx.recv()).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                self.cancel_reason = CancelReason::ReplyBroken;
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    "the reply stream was cut off because it was read too slowly",
                ));
            }
            Err(_) => {
                self.cancel_reason = CancelReason::DeadlineExceeded;
                return Err(ApiError::new(
                    ErrorCode::DeadlineExceeded,
                    "the request did not finish before its deadline",
                ));
            }
        };
        let frame: ReplyFrame = serde_json::from_slice(&bytes).map_err(|e| {
            self.cancel_reason = CancelReason::ReplyBroken;
            tracing::error!(error = %e, "Unreadable reply frame.");
            ApiError::new(
                ErrorCode::Internal,
                "a worker sent an unreadable reply frame",
            )
        })?;
        if frame.seq() != self.next_seq {
            self.cancel_reason = CancelReason::ReplyBroken;
            tracing::warn!(
                expected = self.next_seq,
                got = frame.seq(),
                "Reply frames lost or out of order."
            );
            return Err(ApiError::new(
                ErrorCode::Internal,
                "reply frames were lost on the way; the answer is incomplete",
            ));
        }
        self.next_seq += 1;
        if matches!(frame, ReplyFrame::Final(_)) {
            self.finished = true;
        }
        Ok(frame)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let cancel = Cancel {
            request_id: self.request_id,
            reason: self.cancel_reason,
        };
        let bus = self.bus.clone();
        tracing::debug!(request_id = %self.request_id, reason = ?cancel.reason, "Cancelling abandoned request.");
        tokio::spawn(async move {
            if let Err(e) = bus.publish_cancel(&cancel).await {
                tracing::warn!(error = %e, "Publishing a cancel failed.");
            }
        });
    }
}

/// How the answer is named in OpenAI responses.
#[derive(Debug, Clone)]
pub struct ResponseNames {
    /// `id`.
    pub id: String,
    /// `created`.
    pub created: i64,
    /// `model`.
    pub model: String,
    /// `system_fingerprint`.
    pub system_fingerprint: Option<String>,
}

impl ResponseNames {
    /// From the first frame's start info.
    pub fn from_start(start: Option<&StartInfo>, request_id: Uuid, model: &str) -> Self {
        ResponseNames {
            id: start
                .and_then(|s| s.response_id.clone())
                .unwrap_or_else(|| format!("chatcmpl-{}", request_id.as_simple())),
            created: start
                .and_then(|s| s.created)
                .unwrap_or_else(|| (now_unix_ms() / 1000) as i64),
            model: start
                .and_then(|s| s.served_model.clone())
                .unwrap_or_else(|| model.to_owned()),
            system_fingerprint: start.and_then(|s| s.system_fingerprint.clone()),
        }
    }
}

/// One choice of a non-streamed answer, whole.
#[derive(Debug, Default)]
pub struct AggregatedChoice {
    /// The text.
    pub content: Option<String>,
    /// A refusal.
    pub refusal: Option<String>,
    /// Tool calls, in order.
    pub tool_calls: Vec<AggregatedCall>,
    /// Why it ended.
    pub finish_reason: Option<String>,
    /// Other fields (e.g. `reasoning_content`).
    pub extra: Map<String, Value>,
}

/// One whole tool call.
#[derive(Debug, Default)]
pub struct AggregatedCall {
    /// Its id.
    pub id: String,
    /// The function.
    pub name: String,
    /// JSON arguments.
    pub arguments: String,
}

/// Collects deltas into whole messages for a non-streamed answer.
#[derive(Debug, Default)]
pub struct Aggregate {
    choices: Vec<ChoiceAcc>,
}

#[derive(Debug, Default)]
struct ChoiceAcc {
    role: Option<Role>,
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: Vec<ToolAcc>,
    finish_reason: Option<String>,
    logprobs: Option<Value>,
    extra: Map<String, Value>,
}

#[derive(Debug, Default)]
struct ToolAcc {
    id: String,
    kind: String,
    name: String,
    arguments: String,
}

impl Aggregate {
    /// Adds one frame's deltas.
    pub fn add(&mut self, choices: Vec<ChoiceDelta>) {
        for c in choices {
            let i = c.index as usize;
            if self.choices.len() <= i {
                self.choices.resize_with(i + 1, ChoiceAcc::default);
            }
            let acc = &mut self.choices[i];
            let Delta {
                role,
                content,
                refusal,
                tool_calls,
                extra,
            } = c.delta;
            if role.is_some() {
                acc.role = role;
            }
            if let Some(t) = content {
                acc.content.get_or_insert_with(String::new).push_str(&t);
            }
            if let Some(t) = refusal {
                acc.refusal.get_or_insert_with(String::new).push_str(&t);
            }
            for tc in tool_calls.unwrap_or_default() {
                let j = tc.index as usize;
                if acc.tool_calls.len() <= j {
                    acc.tool_calls.resize_with(j + 1, ToolAcc::default);
                }
                let t = &mut acc.tool_calls[j];
                if let Some(id) = tc.id {
                    t.id = id;
                }
                if let Some(k) = tc.kind {
                    t.kind = k;
                }
                if let Some(f) = tc.function {
                    if let Some(n) = f.name {
                        t.name.push_str(&n);
                    }
                    if let Some(a) = f.arguments {
                        t.arguments.push_str(&a);
                    }
                }
            }
            for (k, v) in extra {
                match (acc.extra.get_mut(&k), v) {
                    (Some(Value::String(s)), Value::String(more)) => s.push_str(&more),
                    (_, v) => {
                        acc.extra.insert(k, v);
                    }
                }
            }
            if c.finish_reason.is_some() {
                acc.finish_reason = c.finish_reason;
            }
            if c.logprobs.is_some() {
                acc.logprobs = c.logprobs;
            }
        }
    }

    /// Choice 0, whole (for APIs without `n`).
    pub fn into_first(self) -> Option<AggregatedChoice> {
        self.choices.into_iter().next().map(|c| AggregatedChoice {
            content: c.content,
            refusal: c.refusal,
            tool_calls: c
                .tool_calls
                .into_iter()
                .map(|t| AggregatedCall {
                    id: t.id,
                    name: t.name,
                    arguments: t.arguments,
                })
                .collect(),
            finish_reason: c.finish_reason,
            extra: c.extra,
        })
    }

    /// The OpenAI `chat.completion` body.
    pub fn into_body(self, names: &ResponseNames, usage: Option<&Usage>) -> Vec<u8> {
        let usage = usage.map(openai_usage);
        let usage = usage.as_deref();
        let choices: Vec<OutChoice> = self
            .choices
            .into_iter()
            .enumerate()
            .map(|(i, c)| OutChoice {
                index: i as u32,
                message: OutMessage {
                    role: c.role.unwrap_or(Role::Assistant),
                    content: c.content,
                    refusal: c.refusal,
                    tool_calls: (!c.tool_calls.is_empty()).then(|| {
                        c.tool_calls
                            .into_iter()
                            .map(|t| OutToolCall {
                                id: t.id,
                                kind: if t.kind.is_empty() {
                                    "function".into()
                                } else {
                                    t.kind
                                },
                                function: OutFunction {
                                    name: t.name,
                                    arguments: t.arguments,
                                },
                            })
                            .collect()
                    }),
                    extra: c.extra,
                },
                logprobs: c.logprobs,
                finish_reason: c.finish_reason,
            })
            .collect();
        serde_json::to_vec(&OutCompletion {
            id: &names.id,
            object: "chat.completion",
            created: names.created,
            model: &names.model,
            choices,
            usage,
            system_fingerprint: names.system_fingerprint.as_deref(),
        })
        .unwrap_or_default()
    }
}

#[derive(Serialize)]
struct OutCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: Vec<OutChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a Usage>,
    system_fingerprint: Option<&'a str>,
}

#[derive(Serialize)]
struct OutChoice {
    index: u32,
    message: OutMessage,
    logprobs: Option<Value>,
    finish_reason: Option<String>,
}

#[derive(Serialize)]
struct OutMessage {
    role: Role,
    content: Option<String>,
    refusal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<OutToolCall>>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Serialize)]
struct OutToolCall {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    function: OutFunction,
}

#[derive(Serialize)]
struct OutFunction {
    name: String,
    arguments: String,
}

/// Renders a streamed answer in one client API's SSE format.
pub trait StreamEncoder: Send + 'static {
    /// The events for one frame's deltas.
    fn chunk(&mut self, choices: &[ChoiceDelta]) -> Bytes;
    /// The end of a successful stream.
    fn finish(&mut self, finish_reason: Option<&str>, usage: Option<&Usage>) -> Bytes;
    /// An error ending the stream.
    fn error(&mut self, e: &ApiError) -> Bytes;
    /// Another target continues the stream (mid-stream recovery): later
    /// events name the model that produces them, where the format names one
    /// per event.
    fn continued_by(&mut self, _start: &StartInfo) {}
}

impl StreamEncoder for SseEncoder {
    fn chunk(&mut self, choices: &[ChoiceDelta]) -> Bytes {
        SseEncoder::chunk(self, choices)
    }

    fn finish(&mut self, _finish_reason: Option<&str>, usage: Option<&Usage>) -> Bytes {
        SseEncoder::finish(self, usage)
    }

    fn error(&mut self, e: &ApiError) -> Bytes {
        SseEncoder::error(self, e)
    }

    fn continued_by(&mut self, start: &StartInfo) {
        self.names.model = start
            .served_model
            .clone()
            .unwrap_or_else(|| start.model.clone());
    }
}

/// Writes OpenAI `chat.completion.chunk` events.
pub struct SseEncoder {
    names: ResponseNames,
    include_usage: bool,
}

#[derive(Serialize)]
struct OutChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    system_fingerprint: Option<&'a str>,
    choices: Vec<OutChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<&'a Usage>>,
}

#[derive(Serialize)]
struct OutChunkChoice<'a> {
    index: u32,
    delta: &'a Delta,
    logprobs: Option<&'a Value>,
    finish_reason: Option<&'a str>,
}

impl SseEncoder {
    /// An encoder naming every chunk with `names`.
    pub fn new(names: ResponseNames, include_usage: bool) -> Self {
        SseEncoder {
            names,
            include_usage,
        }
    }

    fn event(&self, choices: &[ChoiceDelta], usage: Option<Option<&Usage>>) -> Bytes {
        let chunk = OutChunk {
            id: &self.names.id,
            object: "chat.completion.chunk",
            created: self.names.created,
            model: &self.names.model,
            system_fingerprint: self.names.system_fingerprint.as_deref(),
            choices: choices
                .iter()
                .map(|c| OutChunkChoice {
                    index: c.index,
                    delta: &c.delta,
                    logprobs: c.logprobs.as_ref(),
                    finish_reason: c.finish_reason.as_deref(),
                })
                .collect(),
            usage,
        };
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(b"data: ");
        let _ = serde_json::to_writer(&mut buf, &chunk);
        buf.extend_from_slice(b"\n\n");
        Bytes::from(buf)
    }

    /// One chunk event.
    pub fn chunk(&self, choices: &[ChoiceDelta]) -> Bytes {
        self.event(choices, self.include_usage.then_some(None))
    }

    /// The end of a successful stream: the usage chunk if asked for, then `[DONE]`.
    pub fn finish(&self, usage: Option<&Usage>) -> Bytes {
        let mut out = Vec::new();
        if self.include_usage {
            let fallback = Usage::default();
            let usage = openai_usage(usage.unwrap_or(&fallback));
            out.extend_from_slice(&self.event(&[], Some(Some(&usage))));
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        Bytes::from(out)
    }

    /// An error event ending the stream, as OpenAI sends one mid-stream.
    pub fn error(&self, e: &ApiError) -> Bytes {
        let mut buf = Vec::new();
        let _ = write!(buf, "data: ");
        buf.extend_from_slice(&e.openai_body());
        buf.extend_from_slice(b"\n\n");
        Bytes::from(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn delta(v: Value) -> ChoiceDelta {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn deltas_aggregate_into_messages() {
        let mut agg = Aggregate::default();
        agg.add(vec![delta(
            json!({"index":0,"delta":{"role":"assistant","content":""}}),
        )]);
        agg.add(vec![delta(json!({"index":0,"delta":{"content":"Hel"}}))]);
        agg.add(vec![delta(json!({"index":1,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"get","arguments":""}}]}}))]);
        agg.add(vec![delta(json!({"index":1,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]}}))]);
        agg.add(vec![delta(json!({"index":1,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]},"finish_reason":"tool_calls"}))]);
        agg.add(vec![delta(
            json!({"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}),
        )]);
        let names = ResponseNames {
            id: "x".into(),
            created: 1,
            model: "m".into(),
            system_fingerprint: None,
        };
        let usage = Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
            ..Default::default()
        };
        let body: Value = serde_json::from_slice(&agg.into_body(&names, Some(&usage))).unwrap();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["choices"][0]["message"]["content"], "Hello");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["choices"][1]["message"]["content"], Value::Null);
        assert_eq!(
            body["choices"][1]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(body["usage"]["total_tokens"], 3);
    }

    #[test]
    fn sse_events_have_openai_shape() {
        let names = ResponseNames {
            id: "x".into(),
            created: 1,
            model: "m".into(),
            system_fingerprint: Some("fp".into()),
        };
        let enc = SseEncoder::new(names, true);
        let ev = enc.chunk(&[delta(json!({"index":0,"delta":{"content":"a"}}))]);
        let text = std::str::from_utf8(&ev).unwrap();
        assert!(text.starts_with("data: ") && text.ends_with("\n\n"));
        let v: Value = serde_json::from_str(&text[6..]).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["usage"], Value::Null);
        assert_eq!(v["choices"][0]["finish_reason"], Value::Null);
        let end = enc.finish(None);
        let end = std::str::from_utf8(&end).unwrap();
        assert!(end.ends_with("data: [DONE]\n\n"));
        assert!(end.contains("\"choices\":[]"));
    }
}
