//! `POST /v1/messages`: Anthropic's Messages API in and out, whatever provider
//! serves the request. The request is read into `sy_protocol::anthropic`'s
//! typed structs and translated to the canonical (OpenAI-shaped) model once;
//! the answer's frames are rendered as an Anthropic message or as Anthropic's
//! SSE events (`answer`). Errors name the field in Anthropic's dotted form
//! (`messages.0.content.1.text: Input should be a valid string`). Rules for
//! what has no equivalent are in docs/translation.md.

use serde_json::{Map, Value, json};
use serde_path_to_error::Segment;
use sy_protocol::anthropic::{
    self as wire, AT, Block, ImageSource, MessagesRequest, System, Thinking, ToolChoiceKind,
};
use sy_protocol::chat::{
    ChatRequest, Content, ContentPart, FunctionCall, FunctionDef, ImageUrl, Message, Role, Stop,
    Tool, ToolCall,
};

use crate::error::ApiError;

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message)
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

/// The field of a tagged object (a content block) that holds a value of the
/// kind serde's message names: serde reads such an object whole before its
/// fields, so its path ends at the object.
fn culprit(v: &Value, path: &[String], message: &str) -> Option<String> {
    let found = message.strip_prefix("invalid type: ")?;
    let object = if path.is_empty() {
        Some(v)
    } else {
        v.pointer(&format!("/{}", path.join("/")))
    }?
    .as_object()?;
    object.get("type")?;
    let is = |x: &Value| match x {
        Value::Null => found.starts_with("null"),
        Value::Bool(_) => found.starts_with("boolean"),
        Value::Number(_) => found.starts_with("integer") || found.starts_with("floating"),
        Value::String(_) => found.starts_with("string"),
        Value::Array(_) => found.starts_with("sequence"),
        Value::Object(_) => found.starts_with("map"),
    };
    object
        .iter()
        .find(|(k, x)| k.as_str() != "type" && is(x))
        .map(|(k, _)| k.clone())
}

/// What serde could not read, in Anthropic's words, naming the field (`v`
/// is the body).
fn anthropic_error(e: serde_path_to_error::Error<serde_json::Error>, v: &Value) -> ApiError {
    let mut path: Vec<String> = e
        .path()
        .iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.clone()),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect();
    let inner = e.into_inner().to_string();
    let mut message = inner.as_str();
    // The readers of `sy_protocol::anthropic` say where, below the value.
    if let Some((below, rest)) = message.split_once(AT) {
        path.extend(below.split('.').map(str::to_owned));
        message = rest;
    }
    if let Some(field) = culprit(v, &path, message) {
        path.push(field);
    }
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|f| f.strip_suffix('`'))
    {
        path.push(field.to_owned());
        let at = path.join(".");
        return invalid(&at, format!("{at}: Field required"));
    }
    if let Some(variant) = message
        .strip_prefix("unknown variant `")
        .and_then(|m| m.split('`').next())
    {
        // A tagged object inside a block (an image's source) is read with it.
        let at = format!("/{}", path.join("/"));
        if let Some((key, _)) = v.pointer(&at).and_then(Value::as_object).and_then(|o| {
            o.iter()
                .find(|(k, x)| k.as_str() != "type" && x["type"] == variant)
        }) {
            path.push(key.clone());
        }
        let last = path.last().cloned();
        let last = last.as_deref();
        if last != Some("role") && last != Some("type") {
            path.push("type".into());
        }
        let at = path.join(".");
        let what = match (at.as_str(), last) {
            (_, Some("role")) => "Input should be 'user' or 'assistant'",
            ("tool_choice.type", _) => "expected 'auto', 'any', 'tool' or 'none'",
            (_, Some("source")) => "expected 'base64' or 'url'",
            _ => message,
        };
        return invalid(&at, format!("{at}: {what}"));
    }
    let at = path.join(".");
    if at == "max_tokens" {
        return invalid(&at, "max_tokens: must be a positive integer");
    }
    let expected = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|m| m.split_once(", expected "))
        .map(|(_, expected)| expected);
    let what = match expected {
        Some("a string") => "Input should be a valid string".to_owned(),
        Some("f64") => "Input should be a valid number".to_owned(),
        Some("u32" | "u64") => {
            "Input should be a valid integer greater than or equal to 0".to_owned()
        }
        Some("a boolean") => "Input should be a valid boolean".to_owned(),
        Some("a sequence") => "Input should be a valid list".to_owned(),
        Some(e) if e.starts_with("struct ") || e == "a map" => {
            "Input should be a valid dictionary".to_owned()
        }
        Some(e) => format!("expected {e}"),
        None => message.to_owned(),
    };
    invalid(&at, format!("{at}: {what}"))
}

/// A block's `type`, for an error about it (`v` is the body).
fn type_of(b: &Block, v: &Value, pointer: &str) -> String {
    match b {
        Block::Text { .. } => "text".into(),
        Block::Image { .. } => "image".into(),
        Block::ToolUse { .. } => "tool_use".into(),
        Block::ToolResult { .. } => "tool_result".into(),
        Block::Thinking { .. } => "thinking".into(),
        Block::RedactedThinking { .. } => "redacted_thinking".into(),
        Block::Other => v
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("(none)")
            .to_owned(),
    }
}

/// The system prompt: text blocks joined by newlines, or kept apart when one
/// carries a caching breakpoint.
fn system(s: System, v: &Value) -> Result<Option<Content>, ApiError> {
    let blocks = match s {
        System::Text(t) => return Ok((!t.is_empty()).then_some(Content::Text(t))),
        System::Blocks(blocks) => blocks,
    };
    let mut parts = Vec::new();
    for (i, b) in blocks.into_iter().enumerate() {
        match b {
            Block::Text {
                text,
                cache_control,
            } => parts.push(ContentPart::Text {
                text,
                cache_control,
            }),
            other => {
                let kind = type_of(&other, v, &format!("/system/{i}/type"));
                return Err(invalid(
                    &format!("system.{i}.type"),
                    format!("system.{i}: only text blocks are supported here, not {kind:?}"),
                ));
            }
        }
    }
    let marked = parts.iter().any(|p| {
        matches!(
            p,
            ContentPart::Text {
                cache_control: Some(_),
                ..
            }
        )
    });
    if marked {
        return Ok(Some(Content::Parts(parts)));
    }
    let text = parts
        .into_iter()
        .filter_map(|p| match p {
            ContentPart::Text { text, .. } => Some(text),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok((!text.is_empty()).then_some(Content::Text(text)))
}

/// Parses an Anthropic Messages body into the canonical request.
pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let (v, unknown) = crate::validate::json_object(body, KNOWN)?;
    if let Some(k) = unknown {
        return Err(invalid(&k, format!("{k}: Extra inputs are not permitted")));
    }
    let r: MessagesRequest =
        serde_path_to_error::deserialize(&v).map_err(|e| anthropic_error(e, &v))?;
    if r.max_tokens == 0 {
        return Err(invalid(
            "max_tokens",
            "max_tokens: must be a positive integer",
        ));
    }
    let mut messages = Vec::new();
    if let Some(content) = r.system.map(|s| system(s, &v)).transpose()?.flatten() {
        messages.push(message(Role::System, Some(content)));
    }
    for (i, m) in r.messages.into_iter().enumerate() {
        let role = match m.role {
            wire::Role::User => Role::User,
            wire::Role::Assistant => Role::Assistant,
        };
        let mut parts = Vec::new();
        let mut calls = Vec::new();
        for (j, b) in m.content.into_iter().enumerate() {
            match (b, role) {
                (
                    Block::Text {
                        text,
                        cache_control,
                    },
                    _,
                ) => parts.push(ContentPart::Text {
                    text,
                    cache_control,
                }),
                (Block::Image { source, .. }, Role::User) => parts.push(ContentPart::ImageUrl {
                    image_url: ImageUrl {
                        url: match source {
                            ImageSource::Base64 { media_type, data } => {
                                format!("data:{media_type};base64,{data}")
                            }
                            ImageSource::Url { url } => url,
                        },
                        detail: None,
                    },
                }),
                (
                    Block::ToolResult {
                        tool_use_id,
                        content,
                        is_error,
                        cache_control,
                    },
                    Role::User,
                ) => {
                    let text = if is_error == Some(true) {
                        format!("Error: {content}")
                    } else {
                        content
                    };
                    let content = match cache_control {
                        Some(c) => Content::Parts(vec![ContentPart::Text {
                            text,
                            cache_control: Some(c),
                        }]),
                        None => Content::Text(text),
                    };
                    let mut tm = message(Role::Tool, Some(content));
                    tm.tool_call_id = Some(tool_use_id);
                    messages.push(tm);
                }
                (Block::ToolUse { id, name, input }, Role::Assistant) => calls.push(ToolCall {
                    id,
                    kind: "function".into(),
                    function: FunctionCall {
                        name,
                        arguments: input.to_string(),
                    },
                }),
                // Earlier thinking is the provider's own; no other provider can read it.
                (Block::Thinking { .. } | Block::RedactedThinking { .. }, Role::Assistant) => {}
                (other, _) => {
                    let bat = format!("messages.{i}.content.{j}");
                    let kind = type_of(&other, &v, &format!("/messages/{i}/content/{j}/type"));
                    return Err(invalid(
                        &format!("{bat}.type"),
                        format!(
                            "{bat}: content blocks of type {kind:?} are not supported in {} messages by Switchyard",
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
    let tools = match r.tools {
        None => None,
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, t) in list.into_iter().enumerate() {
                if let Some(kind) = t.kind.as_deref().filter(|k| *k != "custom") {
                    return Err(invalid(
                        &format!("tools.{i}.type"),
                        format!(
                            "tools.{i}: server tools ({kind:?}) are not supported by Switchyard"
                        ),
                    ));
                }
                out.push(Tool {
                    kind: "function".into(),
                    function: FunctionDef {
                        name: t.name,
                        description: t.description,
                        parameters: Some(t.input_schema).filter(|s| !s.is_null()),
                        strict: None,
                    },
                    cache_control: t.cache_control,
                });
            }
            Some(out)
        }
    };
    let tool_choice = r.tool_choice.map(|tc| {
        if tc.disable_parallel_tool_use {
            extra.insert("parallel_tool_calls".into(), json!(false));
        }
        match tc.kind {
            ToolChoiceKind::Auto => json!("auto"),
            ToolChoiceKind::Any => json!("required"),
            ToolChoiceKind::None => json!("none"),
            ToolChoiceKind::Tool => json!({"type": "function", "function": {"name": tc.name}}),
        }
    });
    let (thinking_budget, reasoning_effort) = match r.thinking {
        Some(Thinking::Enabled { budget_tokens: b }) => {
            let effort = match b {
                0..2048 => "low",
                2048..8192 => "medium",
                _ => "high",
            };
            (Some(b), Some(effort.to_owned()))
        }
        _ => (None, None),
    };
    let req = ChatRequest {
        model: r.model,
        messages,
        stream: r.stream,
        stream_options: None,
        temperature: r.temperature,
        top_p: r.top_p,
        max_tokens: Some(r.max_tokens),
        max_completion_tokens: None,
        stop: r.stop_sequences.map(Stop::Many),
        seed: None,
        user: r.metadata.and_then(|m| m.user_id),
        n: None,
        tools,
        tool_choice,
        response_format: None,
        reasoning_effort,
        top_k: r.top_k,
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
mod tests;
