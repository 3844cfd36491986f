//! `POST /v1/messages`: Anthropic's Messages API in and out, whatever provider
//! serves the request. The request is translated to the canonical (OpenAI-shaped)
//! model once; the answer's frames are rendered as an Anthropic message or as
//! Anthropic's SSE events (message_start, content_block_start/delta/stop,
//! message_delta, message_stop; `error` mid-stream). Rules for what has no
//! equivalent are in docs/translation.md.

use serde_json::{Map, Value, json};
use sy_protocol::chat::{
    ChatRequest, Content, ContentPart, FunctionCall, FunctionDef, ImageUrl, Message, Role, Stop,
    Tool, ToolCall,
};

use crate::ApiError;
use crate::validate::{need_str, opt_bool, opt_f64, opt_str, opt_u32};

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message)
}

/// Whether a block carries a prompt-caching breakpoint.
fn has_cache(b: &Value) -> bool {
    !b["cache_control"].is_null()
}

/// A text block's text: a string is required (Anthropic refuses the block otherwise).
fn block_text<'a>(b: &'a Value, at: &str) -> Result<&'a str, ApiError> {
    b["text"].as_str().ok_or_else(|| {
        invalid(
            &format!("{at}.text"),
            format!("{at}.text: Input should be a valid string"),
        )
    })
}

/// A text block as a canonical text part, with its caching breakpoint.
fn text_part(b: &Value, at: &str) -> Result<ContentPart, ApiError> {
    Ok(ContentPart::Text {
        text: block_text(b, at)?.to_owned(),
        cache_control: Some(b["cache_control"].clone()).filter(|c| !c.is_null()),
    })
}

/// A field of the wrong type, in Anthropic's words.
fn wrong(key: &str, what: &str) -> ApiError {
    invalid(key, format!("{key}: Input should be {what}"))
}

/// Text of a `system` value or a `tool_result` content: a string or text blocks.
fn blocks_text(v: &Value, at: &str) -> Result<String, ApiError> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut out = Vec::new();
            for (i, b) in blocks.iter().enumerate() {
                match b["type"].as_str() {
                    Some("text") => out.push(block_text(b, &format!("{at}.{i}"))?.to_owned()),
                    other => {
                        return Err(invalid(
                            &format!("{at}.{i}.type"),
                            format!(
                                "{at}.{i}: only text blocks are supported here, not {:?}",
                                other.unwrap_or("(none)")
                            ),
                        ));
                    }
                }
            }
            Ok(out.join("\n"))
        }
        _ => Err(invalid(
            at,
            format!("{at}: expected a string or a list of text blocks"),
        )),
    }
}

fn image_url(source: &Value, at: &str) -> Result<String, ApiError> {
    match source["type"].as_str() {
        Some("base64") => {
            let mime = source["media_type"].as_str().unwrap_or("image/png");
            let data = source["data"].as_str().ok_or_else(|| {
                invalid(
                    &format!("{at}.source.data"),
                    format!("{at}.source.data: Field required"),
                )
            })?;
            Ok(format!("data:{mime};base64,{data}"))
        }
        Some("url") => source["url"].as_str().map(str::to_owned).ok_or_else(|| {
            invalid(
                &format!("{at}.source.url"),
                format!("{at}.source.url: Field required"),
            )
        }),
        _ => Err(invalid(
            &format!("{at}.source.type"),
            format!("{at}.source.type: expected 'base64' or 'url'"),
        )),
    }
}

/// Top-level fields Switchyard reads; anything else is refused (as Anthropic does).
const KNOWN: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "metadata",
    "thinking",
    "service_tier",
];

/// Parses an Anthropic Messages body into the canonical request.
pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let (v, unknown) = crate::validate::json_object(body, KNOWN)?;
    if let Some(k) = unknown {
        return Err(invalid(&k, format!("{k}: Extra inputs are not permitted")));
    }
    let model = v["model"]
        .as_str()
        .ok_or_else(|| invalid("model", "model: Field required"))?
        .to_owned();
    let max_tokens = match &v["max_tokens"] {
        Value::Null => return Err(invalid("max_tokens", "max_tokens: Field required")),
        m => m
            .as_u64()
            .filter(|m| *m >= 1)
            .and_then(|m| u32::try_from(m).ok())
            .ok_or_else(|| invalid("max_tokens", "max_tokens: must be a positive integer"))?,
    };
    let mut messages = Vec::new();
    let system = blocks_text(&v["system"], "system")?;
    if let Some(blocks) = v["system"].as_array().filter(|b| b.iter().any(has_cache)) {
        // Caching breakpoints in the system prompt keep its blocks apart.
        let parts = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| text_part(b, &format!("system.{i}")))
            .collect::<Result<_, _>>()?;
        messages.push(message(Role::System, Some(Content::Parts(parts))));
    } else if !system.is_empty() {
        messages.push(message(Role::System, Some(Content::Text(system))));
    }
    let list = v["messages"]
        .as_array()
        .ok_or_else(|| invalid("messages", "messages: Field required"))?;
    for (i, m) in list.iter().enumerate() {
        let at = format!("messages.{i}");
        let role = match m["role"].as_str() {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            _ => {
                return Err(invalid(
                    &format!("{at}.role"),
                    format!("{at}.role: Input should be 'user' or 'assistant'"),
                ));
            }
        };
        let blocks: Vec<Value> = match &m["content"] {
            Value::String(s) => vec![json!({"type": "text", "text": s})],
            Value::Array(b) => b.clone(),
            _ => {
                return Err(invalid(
                    &format!("{at}.content"),
                    format!("{at}.content: expected a string or a list of content blocks"),
                ));
            }
        };
        let mut parts = Vec::new();
        let mut calls = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            let bat = format!("{at}.content.{j}");
            match (b["type"].as_str(), role) {
                (Some("text"), _) => parts.push(text_part(b, &bat)?),
                (Some("image"), Role::User) => parts.push(ContentPart::ImageUrl {
                    image_url: ImageUrl {
                        url: image_url(&b["source"], &bat)?,
                        detail: None,
                    },
                }),
                (Some("tool_result"), Role::User) => {
                    let id = b["tool_use_id"].as_str().ok_or_else(|| {
                        invalid(
                            &format!("{bat}.tool_use_id"),
                            format!("{bat}.tool_use_id: Field required"),
                        )
                    })?;
                    let mut text = blocks_text(&b["content"], &format!("{bat}.content"))?;
                    if b["is_error"].as_bool() == Some(true) {
                        text = format!("Error: {text}");
                    }
                    let content = if has_cache(b) {
                        Content::Parts(vec![ContentPart::Text {
                            text,
                            cache_control: Some(b["cache_control"].clone()),
                        }])
                    } else {
                        Content::Text(text)
                    };
                    let mut tm = message(Role::Tool, Some(content));
                    tm.tool_call_id = Some(id.to_owned());
                    messages.push(tm);
                }
                (Some("tool_use"), Role::Assistant) => calls.push(ToolCall {
                    id: need_str(&b["id"], &format!("{bat}.id"), wrong)?.to_owned(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: need_str(&b["name"], &format!("{bat}.name"), wrong)?.to_owned(),
                        arguments: b.get("input").unwrap_or(&json!({})).to_string(),
                    },
                }),
                // Earlier thinking is the provider's own; no other provider can read it.
                (Some("thinking" | "redacted_thinking"), Role::Assistant) => {}
                (other, _) => {
                    return Err(invalid(
                        &format!("{bat}.type"),
                        format!(
                            "{bat}: content blocks of type {:?} are not supported in {} messages by Switchyard",
                            other.unwrap_or("(none)"),
                            if role == Role::User {
                                "user"
                            } else {
                                "assistant"
                            }
                        ),
                    ));
                }
            }
        }
        if role == Role::User && parts.is_empty() {
            continue;
        }
        let content = match parts.as_slice() {
            [] => None,
            [
                ContentPart::Text {
                    text,
                    cache_control: None,
                },
            ] => Some(Content::Text(text.clone())),
            _ => Some(Content::Parts(parts)),
        };
        let mut msg = message(role, content);
        if !calls.is_empty() {
            msg.tool_calls = Some(calls);
        }
        if role == Role::Assistant && msg.content.is_none() && msg.tool_calls.is_none() {
            msg.content = Some(Content::Text(String::new()));
        }
        messages.push(msg);
    }
    let mut extra = Map::new();
    let tools = match &v["tools"] {
        Value::Null => None,
        Value::Array(list) => {
            let mut out = Vec::new();
            for (i, t) in list.iter().enumerate() {
                if t.get("type").is_some_and(|ty| ty != "custom") {
                    return Err(invalid(
                        &format!("tools.{i}.type"),
                        format!(
                            "tools.{i}: server tools ({}) are not supported by Switchyard",
                            t["type"]
                        ),
                    ));
                }
                out.push(Tool {
                    kind: "function".into(),
                    function: FunctionDef {
                        name: t["name"]
                            .as_str()
                            .ok_or_else(|| {
                                invalid(
                                    &format!("tools.{i}.name"),
                                    format!("tools.{i}.name: Field required"),
                                )
                            })?
                            .to_owned(),
                        description: opt_str(
                            &t["description"],
                            &format!("tools.{i}.description"),
                            wrong,
                        )?
                        .map(str::to_owned),
                        parameters: Some(t["input_schema"].clone()).filter(|s| !s.is_null()),
                        strict: None,
                    },
                    cache_control: Some(t["cache_control"].clone()).filter(|c| !c.is_null()),
                });
            }
            Some(out)
        }
        _ => return Err(invalid("tools", "tools: expected a list")),
    };
    let tool_choice = match &v["tool_choice"] {
        Value::Null => None,
        tc => {
            if tc["disable_parallel_tool_use"].as_bool() == Some(true) {
                extra.insert("parallel_tool_calls".into(), json!(false));
            }
            Some(match tc["type"].as_str() {
                Some("auto") => json!("auto"),
                Some("any") => json!("required"),
                Some("none") => json!("none"),
                Some("tool") => json!({"type": "function", "function": {"name": tc["name"]}}),
                _ => {
                    return Err(invalid(
                        "tool_choice.type",
                        "tool_choice.type: expected 'auto', 'any', 'tool' or 'none'",
                    ));
                }
            })
        }
    };
    let (thinking_budget, reasoning_effort) = match v["thinking"]["type"].as_str() {
        Some("enabled") => {
            let b = v["thinking"]["budget_tokens"]
                .as_u64()
                .and_then(|b| u32::try_from(b).ok())
                .ok_or_else(|| {
                    invalid(
                        "thinking.budget_tokens",
                        "thinking.budget_tokens: Field required",
                    )
                })?;
            let effort = match b {
                0..2048 => "low",
                2048..8192 => "medium",
                _ => "high",
            };
            (Some(b), Some(effort.to_owned()))
        }
        _ => (None, None),
    };
    let stop = match &v["stop_sequences"] {
        Value::Null => None,
        Value::Array(s) => Some(Stop::Many(
            s.iter()
                .enumerate()
                .map(|(i, x)| {
                    x.as_str().map(str::to_owned).ok_or_else(|| {
                        invalid(
                            &format!("stop_sequences.{i}"),
                            format!("stop_sequences.{i}: Input should be a valid string"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        )),
        _ => {
            return Err(invalid(
                "stop_sequences",
                "stop_sequences: Input should be a valid list",
            ));
        }
    };
    let user = match &v["metadata"] {
        Value::Null => None,
        Value::Object(m) => match m.get("user_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(u)) => Some(u.clone()),
            Some(_) => {
                return Err(invalid(
                    "metadata.user_id",
                    "metadata.user_id: Input should be a valid string",
                ));
            }
        },
        _ => {
            return Err(invalid(
                "metadata",
                "metadata: Input should be a valid dictionary",
            ));
        }
    };
    let req = ChatRequest {
        model,
        messages,
        stream: opt_bool(&v["stream"], "stream", wrong)?,
        stream_options: None,
        temperature: opt_f64(&v["temperature"], "temperature", wrong)?,
        top_p: opt_f64(&v["top_p"], "top_p", wrong)?,
        max_tokens: Some(max_tokens),
        max_completion_tokens: None,
        stop,
        seed: None,
        user,
        n: None,
        tools,
        tool_choice,
        response_format: None,
        reasoning_effort,
        top_k: opt_u32(&v["top_k"], "top_k", wrong)?,
        thinking_budget,
        extra,
    };
    if req.temperature.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
        return Err(invalid(
            "temperature",
            "temperature: must be between 0 and 1",
        ));
    }
    if req.messages.iter().all(|m| m.role == Role::System) {
        return Err(invalid(
            "messages",
            "messages: at least one message is required",
        ));
    }
    Ok(req)
}

fn message(role: Role, content: Option<Content>) -> Message {
    Message {
        role,
        content,
        name: None,
        tool_calls: None,
        tool_call_id: None,
        refusal: None,
        extra: Map::new(),
    }
}

mod answer;
pub use answer::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_breakpoints_reach_the_canonical_request() {
        let mark = json!({"type": "ephemeral"});
        let body = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 64,
            "system": [
                {"type": "text", "text": "Long instructions."},
                {"type": "text", "text": "A large document.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
            ],
            "messages": [
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a cat", "cache_control": mark},
                    {"type": "text", "text": "Go on."}
                ]}
            ],
            "tools": [{"name": "look", "input_schema": {"type": "object"}, "cache_control": mark}]
        });
        let req = parse(body.to_string().as_bytes()).unwrap();
        crate::validate_chat(&req).unwrap();
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v["messages"],
            json!([
                {"role": "system", "content": [
                    {"type": "text", "text": "Long instructions."},
                    {"type": "text", "text": "A large document.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
                ]},
                {"role": "tool", "content": [{"type": "text", "text": "a cat", "cache_control": mark}], "tool_call_id": "toolu_1"},
                {"role": "user", "content": "Go on."}
            ])
        );
        assert_eq!(v["tools"][0]["cache_control"], mark);

        // Without breakpoints the system prompt stays one string.
        let plain = json!({"model": "m", "max_tokens": 8,
            "system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
            "messages": [{"role": "user", "content": "hi"}]});
        let v = serde_json::to_value(parse(plain.to_string().as_bytes()).unwrap()).unwrap();
        assert_eq!(
            v["messages"][0],
            json!({"role": "system", "content": "A\nB"})
        );
    }

    #[test]
    fn bad_cache_breakpoints_are_refused_before_any_provider() {
        for (cc, param) in [
            (
                json!({"type": "persistent"}),
                "messages[0].content[0].cache_control",
            ),
            (
                json!({"type": "ephemeral", "ttl": "2d"}),
                "messages[0].content[0].cache_control",
            ),
            (json!("ephemeral"), "messages[0].content[0].cache_control"),
        ] {
            let body = json!({"model": "m", "max_tokens": 8, "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": cc}]}]});
            let err = parse(body.to_string().as_bytes())
                .and_then(|r| crate::validate_chat(&r))
                .unwrap_err();
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST, "{cc}");
            assert_eq!(err.param.as_deref(), Some(param), "{cc}");
        }
        let five: Vec<Value> = (0..5)
            .map(|i| json!({"type": "text", "text": format!("part {i}"), "cache_control": {"type": "ephemeral"}}))
            .collect();
        let body =
            json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": five}]});
        let err = parse(body.to_string().as_bytes())
            .and_then(|r| crate::validate_chat(&r))
            .unwrap_err();
        assert!(err.message.contains("maximum of 4"), "{}", err.message);
    }

    #[test]
    fn request_translates_system_blocks_tools_and_results() {
        let body = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 256,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?", "cache_control": {"type": "ephemeral"}},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "x"},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"q": 1}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "a cat"}]},
                    {"type": "text", "text": "So?"}
                ]}
            ],
            "tools": [{"name": "look", "description": "Looks.", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"],
            "temperature": 0.3,
            "top_k": 5,
            "metadata": {"user_id": "u1"},
            "thinking": {"type": "enabled", "budget_tokens": 3000},
            "stream": true
        });
        let req = parse(body.to_string().as_bytes()).unwrap();
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v["messages"],
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?", "cache_control": {"type": "ephemeral"}},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                ]},
                {"role": "assistant", "content": "Let me look.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":1}"}}
                ]},
                {"role": "tool", "content": "a cat", "tool_call_id": "toolu_1"},
                {"role": "user", "content": "So?"}
            ])
        );
        assert_eq!(
            v["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
        assert_eq!(v["tool_choice"], "required");
        assert_eq!(v["parallel_tool_calls"], false);
        assert_eq!(v["stop"], json!(["END"]));
        assert_eq!(v["max_tokens"], 256);
        assert_eq!(v["user"], "u1");
        assert_eq!(req.top_k, Some(5));
        assert_eq!(req.thinking_budget, Some(3000));
        assert_eq!(req.reasoning_effort.as_deref(), Some("medium"));
        assert!(req.is_stream());
    }

    #[test]
    fn bad_requests_name_the_field() {
        let e = |v: Value| parse(v.to_string().as_bytes()).unwrap_err();
        let msgs = json!([{"role": "user", "content": "x"}]);
        assert_eq!(
            e(json!({"model": "m", "messages": msgs})).param.as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            e(json!({"model": "m", "max_tokens": 5, "messages": msgs, "n": 2}))
                .param
                .as_deref(),
            Some("n")
        );
        assert_eq!(
            e(json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}))
                .param
                .as_deref(),
            Some("messages.0.role")
        );
        assert_eq!(
            e(
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "document", "source": {}}]}]})
            )
            .param
            .as_deref(),
            Some("messages.0.content.0.type")
        );
        assert_eq!(
            e(json!({"model": "m", "max_tokens": 5, "messages": msgs, "temperature": 1.5}))
                .param
                .as_deref(),
            Some("temperature")
        );
        assert_eq!(
            e(json!({"model": "m", "max_tokens": 5, "messages": msgs,
                "tools": [{"type": "web_search_20250305", "name": "web_search"}]}))
            .param
            .as_deref(),
            Some("tools.0.type")
        );
    }
}
