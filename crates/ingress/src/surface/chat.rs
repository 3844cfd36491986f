//! OpenAI Chat Completions: the request body parsed into the canonical chat
//! request (whose rules, shared by every surface, are `validate::validate_chat`),
//! a non-streamed answer's `chat.completion` body, and the
//! `chat.completion.chunk` event stream.

use std::io::Write;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use sy_protocol::StartInfo;
use sy_protocol::TokenUsage;
use sy_protocol::chat::{ChatRequest, ChoiceDelta, Delta, Role};

use crate::error::ApiError;
use crate::relay::{AggregatedChoice, StreamEncoder};
use sy_protocol::ResponseMeta;

/// Parses a chat request body, naming the offending field on failure.
pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
    match serde_json::from_slice::<ChatRequest>(body) {
        Ok(req) => Ok(req),
        // The fast parse failed; parse again only to say where and why.
        Err(e) if e.is_syntax() || e.is_eof() => Err(ApiError::new(
            sy_protocol::ErrorCode::InvalidRequest,
            format!(
                "We could not parse the JSON body of your request: {e}. The body must be a JSON object."
            ),
        )),
        Err(_) => {
            let de = &mut serde_json::Deserializer::from_slice(body);
            match serde_path_to_error::deserialize::<_, ChatRequest>(de) {
                Ok(req) => Ok(req),
                Err(e) => {
                    let path = e.path().to_string();
                    let inner = e.into_inner().to_string();
                    let inner = inner.split(" at line ").next().unwrap_or(&inner).to_owned();
                    if let Some(field) = inner
                        .strip_prefix("missing field `")
                        .and_then(|s| s.strip_suffix('`'))
                    {
                        let param = if path == "." {
                            field.to_owned()
                        } else {
                            format!("{path}.{field}")
                        };
                        Err(ApiError::invalid(
                            param.clone(),
                            format!("Missing required parameter: '{param}'."),
                        ))
                    } else if path == "." {
                        Err(ApiError::new(
                            sy_protocol::ErrorCode::InvalidRequest,
                            format!("The request body must be a JSON object: {inner}."),
                        ))
                    } else {
                        Err(ApiError::invalid(
                            path.clone(),
                            format!("Invalid value for '{path}': {inner}."),
                        ))
                    }
                }
            }
        }
    }
}

/// OpenAI's usage object: `prompt_tokens` counts every input class (a cache
/// write is an input token OpenAI's API has no field for; accounting prices
/// it apart), `completion_tokens` includes reasoning.
#[derive(Debug, Serialize)]
pub(crate) struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: CompletionDetails,
}

#[derive(Debug, Serialize)]
struct PromptDetails {
    cached_tokens: u64,
}

#[derive(Debug, Serialize)]
struct CompletionDetails {
    reasoning_tokens: u64,
}

/// Token usage in OpenAI's shape.
pub(crate) fn usage(u: &TokenUsage) -> WireUsage {
    WireUsage {
        prompt_tokens: u.prompt_tokens(),
        completion_tokens: u.output_tokens,
        total_tokens: u.total_tokens(),
        prompt_tokens_details: PromptDetails {
            cached_tokens: u.cached_input_tokens,
        },
        completion_tokens_details: CompletionDetails {
            reasoning_tokens: u.reasoning_tokens,
        },
    }
}

/// The OpenAI `chat.completion` body of a non-streamed answer.
pub fn body(
    choices: Vec<AggregatedChoice>,
    names: &ResponseMeta,
    usage: Option<&TokenUsage>,
) -> Vec<u8> {
    let usage = usage.map(self::usage);
    let choices: Vec<OutChoice> = choices
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
        id: names.id(),
        object: "chat.completion",
        created: names.created(),
        model: names.model(),
        choices,
        usage,
        system_fingerprint: names.system_fingerprint.as_deref(),
    })
    .unwrap_or_default()
}

#[derive(Serialize)]
struct OutCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: Vec<OutChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<WireUsage>,
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

impl StreamEncoder for SseEncoder {
    fn chunk(&mut self, choices: &[ChoiceDelta]) -> Bytes {
        SseEncoder::chunk(self, choices)
    }

    fn finish(&mut self, _finish_reason: Option<&str>, usage: Option<&TokenUsage>) -> Bytes {
        SseEncoder::finish(self, usage)
    }

    fn error(&mut self, e: &ApiError) -> Bytes {
        SseEncoder::error(self, e)
    }

    fn continued_by(&mut self, start: &StartInfo) {
        self.names.served_model = Some(
            start
                .response
                .served_model
                .clone()
                .unwrap_or_else(|| start.upstream_model.clone()),
        );
    }
}

/// Writes OpenAI `chat.completion.chunk` events.
pub struct SseEncoder {
    names: ResponseMeta,
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
    usage: Option<Option<&'a WireUsage>>,
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
    pub fn new(names: ResponseMeta, include_usage: bool) -> Self {
        SseEncoder {
            names,
            include_usage,
        }
    }

    fn event(&self, choices: &[ChoiceDelta], usage: Option<Option<&WireUsage>>) -> Bytes {
        let chunk = OutChunk {
            id: self.names.id(),
            object: "chat.completion.chunk",
            created: self.names.created(),
            model: self.names.model(),
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
    pub fn finish(&self, usage: Option<&TokenUsage>) -> Bytes {
        let mut out = Vec::new();
        if self.include_usage {
            let usage = self::usage(&usage.copied().unwrap_or_default());
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
    use crate::relay::Aggregate;
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
        let names = ResponseMeta {
            response_id: Some("x".into()),
            created: Some(1),
            served_model: Some("m".into()),
            system_fingerprint: None,
        };
        let usage = TokenUsage {
            input_tokens: 1,
            output_tokens: 2,
            ..Default::default()
        };
        let body: Value =
            serde_json::from_slice(&body(agg.into_choices(), &names, Some(&usage))).unwrap();
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
        let names = ResponseMeta {
            response_id: Some("x".into()),
            created: Some(1),
            served_model: Some("m".into()),
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

    #[test]
    fn token_usage_renders_in_openai_shape_with_every_input_class_in_the_prompt() {
        let u = TokenUsage {
            input_tokens: 10,
            cached_input_tokens: 100,
            cache_write_tokens: 20,
            cache_write_1h_tokens: 0,
            output_tokens: 7,
            reasoning_tokens: 3,
        };
        let v = serde_json::to_value(usage(&u)).unwrap();
        assert_eq!(
            v,
            json!({
                "prompt_tokens": 130, "completion_tokens": 7, "total_tokens": 137,
                "prompt_tokens_details": {"cached_tokens": 100},
                "completion_tokens_details": {"reasoning_tokens": 3},
            })
        );
    }
}
