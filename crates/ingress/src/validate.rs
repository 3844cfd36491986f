//! Request parsing and validation: bad input never reaches a provider.

use sy_protocol::chat::{ChatRequest, Content, ContentPart, Role};

use crate::error::ApiError;

/// Refuses a body nested deeper than [`MAX_BODY_DEPTH`](sy_protocol::json::MAX_BODY_DEPTH)
/// before any parser sees it, on every surface: the envelope that carries it
/// must stay readable by the worker.
pub(crate) fn check_depth(body: &[u8]) -> Result<(), ApiError> {
    let limit = sy_protocol::json::MAX_BODY_DEPTH;
    match sy_protocol::json::nesting_depth(body, limit) {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            sy_protocol::ErrorCode::InvalidRequest,
            format!(
                "The JSON body nests arrays and objects more than {limit} levels deep, the most this server accepts."
            ),
        )),
    }
}

/// Parses a body that must be a JSON object, for the surfaces translated by hand
/// (Messages, Responses); returns it with the first key not in `known`, if any.
pub(crate) fn json_object(
    body: &[u8],
    known: &[&str],
) -> Result<(serde_json::Value, Option<String>), ApiError> {
    let v = serde_json::from_slice::<Strict>(body)
        .map_err(|e| {
            ApiError::new(
                sy_protocol::ErrorCode::InvalidRequest,
                format!("We could not parse the JSON body of your request: {e}."),
            )
        })?
        .0;
    let Some(obj) = v.as_object() else {
        return Err(ApiError::new(
            sy_protocol::ErrorCode::InvalidRequest,
            "The request body must be a JSON object.",
        ));
    };
    let unknown = obj.keys().find(|k| !known.contains(&k.as_str())).cloned();
    Ok((v, unknown))
}

/// The fields of a body that must be one JSON object (no deeper than
/// allowed, no key twice, nothing after it), for the surfaces that read
/// their fields one by one (rerank, images).
pub(crate) fn object_fields(
    body: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    check_depth(body)?;
    match json_object(body, &[])?.0 {
        serde_json::Value::Object(fields) => Ok(fields),
        _ => Err(ApiError::new(
            sy_protocol::ErrorCode::InvalidRequest,
            "The request body must be a JSON object.",
        )),
    }
}

/// An optional string field, taken out of `fields`; a 400 naming it when
/// it is something else.
pub(crate) fn take_string(
    fields: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Option<String>, ApiError> {
    match fields.remove(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(
            name,
            format!("Invalid value for '{name}': it must be a string."),
        )),
    }
}

/// A required field's 400.
pub(crate) fn missing(name: &str) -> ApiError {
    ApiError::invalid(name, format!("Missing required parameter: '{name}'."))
}

/// A JSON value parsed as serde_json parses one, except that an object with
/// the same key twice, at any depth, is an error (serde_json keeps the last),
/// as it is for the surfaces parsed into typed structs.
struct Strict(serde_json::Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(b.into())
    }

    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(n.into())
    }

    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(n.into())
    }

    fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, Into::into))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(s.into())
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(s.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        serde::Deserialize::deserialize(d).map(|Strict(v)| v)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(serde_json::Value::Array(out))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(A::Error::custom(format_args!(
                    "duplicate key `{}`",
                    sy_protocol::bounded(&key, 64)
                )));
            }
            out.insert(key, v);
        }
        Ok(serde_json::Value::Object(out))
    }
}

/// How a surface words a field of the wrong type: `(key, what it should be)`.
pub(crate) type Wrong = fn(&str, &str) -> ApiError;

/// Optional fields of the surfaces read from JSON by hand (Messages,
/// Responses), typed: `x` is the field's value (`Null` when absent), `param`
/// its name for the error. Absent or `null` is `None`, a value of the wrong
/// type is an error in the surface's words (never silently dropped).
pub(crate) fn opt_f64(
    x: &serde_json::Value,
    param: &str,
    wrong: Wrong,
) -> Result<Option<f64>, ApiError> {
    match x {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => Ok(n.as_f64()),
        _ => Err(wrong(param, "a valid number")),
    }
}

/// See [`opt_f64`]: a boolean.
pub(crate) fn opt_bool(
    x: &serde_json::Value,
    param: &str,
    wrong: Wrong,
) -> Result<Option<bool>, ApiError> {
    match x {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Bool(b) => Ok(Some(*b)),
        _ => Err(wrong(param, "a valid boolean")),
    }
}

/// See [`opt_f64`]: a string.
pub(crate) fn opt_str<'a>(
    x: &'a serde_json::Value,
    param: &str,
    wrong: Wrong,
) -> Result<Option<&'a str>, ApiError> {
    match x {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s)),
        _ => Err(wrong(param, "a valid string")),
    }
}

/// A required string field: absent, `null` or another type is an error.
pub(crate) fn need_str<'a>(
    x: &'a serde_json::Value,
    param: &str,
    wrong: Wrong,
) -> Result<&'a str, ApiError> {
    x.as_str().ok_or_else(|| wrong(param, "a valid string"))
}

/// Checks the rules serde cannot express.
pub fn validate_chat(req: &ChatRequest) -> Result<(), ApiError> {
    if req.model.trim().is_empty() {
        return Err(ApiError::invalid("model", "'model' must not be empty."));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "'messages' must contain at least one message.",
        ));
    }
    for (i, m) in req.messages.iter().enumerate() {
        let at = |f: &str| format!("messages[{i}].{f}");
        match m.role {
            Role::Assistant => {
                if m.content.is_none() && m.tool_calls.is_none() && m.refusal.is_none() {
                    return Err(ApiError::invalid(
                        at("content"),
                        format!(
                            "'messages[{i}]': an assistant message needs 'content' or 'tool_calls'."
                        ),
                    ));
                }
            }
            Role::Tool => {
                if m.tool_call_id.as_deref().is_none_or(str::is_empty) {
                    return Err(ApiError::invalid(
                        at("tool_call_id"),
                        format!("Missing required parameter: 'messages[{i}].tool_call_id'."),
                    ));
                }
                if m.content.is_none() {
                    return Err(ApiError::invalid(
                        at("content"),
                        format!("Missing required parameter: 'messages[{i}].content'."),
                    ));
                }
            }
            _ => {
                if m.content.is_none() {
                    return Err(ApiError::invalid(
                        at("content"),
                        format!("Missing required parameter: 'messages[{i}].content'."),
                    ));
                }
            }
        }
        if let Some(Content::Parts(parts)) = &m.content
            && parts.is_empty()
            && m.role != Role::Assistant
        {
            return Err(ApiError::invalid(
                at("content"),
                format!("'messages[{i}].content' must not be an empty array."),
            ));
        }
    }
    if let Some(t) = req.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(ApiError::invalid(
            "temperature",
            "'temperature' must be between 0 and 2.",
        ));
    }
    if let Some(p) = req.top_p
        && !(0.0..=1.0).contains(&p)
    {
        return Err(ApiError::invalid(
            "top_p",
            "'top_p' must be between 0 and 1.",
        ));
    }
    if let Some(n) = req.n
        && !(1..=128).contains(&n)
    {
        return Err(ApiError::invalid("n", "'n' must be between 1 and 128."));
    }
    for (name, v) in [
        ("max_tokens", req.max_tokens),
        ("max_completion_tokens", req.max_completion_tokens),
    ] {
        if v == Some(0) {
            return Err(ApiError::invalid(
                name,
                format!("'{name}' must be at least 1."),
            ));
        }
    }
    if let Some(sy_protocol::chat::Stop::Many(s)) = &req.stop
        && s.len() > 4
    {
        return Err(ApiError::invalid(
            "stop",
            "'stop' takes at most 4 sequences.",
        ));
    }
    if req.stream_options.is_some() && !req.is_stream() {
        return Err(ApiError::invalid(
            "stream_options",
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        ));
    }
    if let Some(tools) = &req.tools {
        for (i, t) in tools.iter().enumerate() {
            if t.kind != "function" {
                return Err(ApiError::invalid(
                    format!("tools[{i}].type"),
                    format!("'tools[{i}].type' must be 'function'."),
                ));
            }
            let name = &t.function.name;
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.name"),
                    format!("'tools[{i}].function.name' must match ^[a-zA-Z0-9_-]{{1,64}}$."),
                ));
            }
        }
    }
    check_cache_marks(req)?;
    if let Some(tc) = &req.tool_choice {
        check_tool_choice(tc)?;
    }
    if req.tool_choice.is_some()
        && req.tools.as_ref().is_none_or(Vec::is_empty)
        && req.tool_choice.as_ref().and_then(|v| v.as_str()) != Some("none")
    {
        return Err(ApiError::invalid(
            "tool_choice",
            "'tool_choice' is only allowed when 'tools' are specified.",
        ));
    }
    Ok(())
}

/// `tool_choice` in OpenAI's shapes: `"none"`, `"auto"`, `"required"`, or an
/// object naming a function (`{"type":"function","function":{"name":…}}`) or
/// allowing some tools (`{"type":"allowed_tools",…}`). Anything else would be
/// dropped or misread by a provider's translation, so it is refused here.
fn check_tool_choice(tc: &serde_json::Value) -> Result<(), ApiError> {
    let ok = match tc {
        serde_json::Value::String(s) => matches!(s.as_str(), "none" | "auto" | "required"),
        serde_json::Value::Object(o) => match o.get("type").and_then(|t| t.as_str()) {
            Some("function") => o
                .get("function")
                .and_then(|f| f.get("name"))
                .is_some_and(serde_json::Value::is_string),
            Some("allowed_tools") => o.get("allowed_tools").is_some_and(|a| a.is_object()),
            _ => false,
        },
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "tool_choice",
            "'tool_choice' must be 'none', 'auto', 'required', or {\"type\": \"function\", \"function\": {\"name\": ...}}.",
        ))
    }
}

/// Most caching breakpoints a request may carry (Anthropic's limit).
pub const MAX_CACHE_MARKS: usize = 4;

/// Prompt-caching breakpoints (`cache_control` on text parts and tools) are
/// `{"type": "ephemeral"}` with an optional `"ttl": "5m" | "1h"`, at most
/// [`MAX_CACHE_MARKS`] per request; checked here so a bad one never reaches a
/// provider.
fn check_cache_marks(req: &ChatRequest) -> Result<(), ApiError> {
    let mut marks = 0usize;
    // The path is only formatted for an error.
    let mut check = |c: &serde_json::Value, at: &dyn Fn() -> String| {
        marks += 1;
        let ok = c.as_object().is_some_and(|o| {
            o.get("type").and_then(|t| t.as_str()) == Some("ephemeral")
                && o.get("ttl")
                    .is_none_or(|t| matches!(t.as_str(), Some("5m" | "1h")))
                && o.keys().all(|k| k == "type" || k == "ttl")
        });
        if ok {
            return Ok(());
        }
        let at = at();
        Err(ApiError::invalid(
            at.clone(),
            format!(
                "'{at}' must be {{\"type\": \"ephemeral\"}}, optionally with \"ttl\": \"5m\" or \"1h\"."
            ),
        ))
    };
    for (i, m) in req.messages.iter().enumerate() {
        if let Some(Content::Parts(parts)) = &m.content {
            for (j, p) in parts.iter().enumerate() {
                if let ContentPart::Text {
                    cache_control: Some(c),
                    ..
                } = p
                {
                    check(c, &|| format!("messages[{i}].content[{j}].cache_control"))?;
                }
            }
        }
    }
    for (i, t) in req.tools.iter().flatten().enumerate() {
        if let Some(c) = &t.cache_control {
            check(c, &|| format!("tools[{i}].cache_control"))?;
        }
    }
    if marks > MAX_CACHE_MARKS {
        return Err(ApiError::invalid(
            "cache_control",
            format!(
                "A maximum of {MAX_CACHE_MARKS} blocks with cache_control may be provided. Found {marks}."
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::surface::chat::parse_chat;

    fn err(body: &str) -> ApiError {
        match parse_chat(body.as_bytes()).and_then(|r| validate_chat(&r).map(|()| r)) {
            Ok(_) => panic!("accepted: {body}"),
            Err(e) => e,
        }
    }

    #[test]
    fn bad_bodies_name_the_problem() {
        assert!(err("{not json").message.contains("parse the JSON"));
        assert_eq!(
            err(r#"{"messages":[{"role":"user","content":"x"}]}"#)
                .param
                .as_deref(),
            Some("model")
        );
        assert_eq!(err(r#"{"model":"m"}"#).param.as_deref(), Some("messages"));
        assert_eq!(
            err(r#"{"model":"m","messages":[]}"#).param.as_deref(),
            Some("messages")
        );
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#)
                .param
                .as_deref(),
            Some("temperature")
        );
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#)
                .param
                .as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#)
                .param
                .as_deref(),
            Some("temperature")
        );
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#)
                .param
                .as_deref(),
            Some("stream_options")
        );
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#)
                .param
                .as_deref(),
            Some("messages[0].tool_call_id")
        );
        assert!(err("[1,2]").message.contains("JSON object"));
    }

    #[test]
    fn a_full_request_is_accepted() {
        let body = r#"{"model":"m","messages":[
            {"role":"system","content":"s"},
            {"role":"user","content":[{"type":"text","text":"t"}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"c","content":"r"}],
            "temperature":0.2,"top_p":0.9,"max_tokens":10,"max_completion_tokens":10,"stop":"x","seed":1,"user":"u","n":2,
            "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"tool_choice":"auto",
            "response_format":{"type":"json_object"},"stream":true,"stream_options":{"include_usage":true},"logit_bias":{}}"#;
        let req = parse_chat(body.as_bytes()).unwrap();
        validate_chat(&req).unwrap();
        assert!(req.extra.contains_key("logit_bias"));
    }
}
