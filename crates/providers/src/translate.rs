//! Rules every non-OpenAI adapter applies the same way: which OpenAI fields are
//! dropped as hints, which are refused, and small helpers for content parts.
//! docs/translation.md lists the same rules for users.

use serde_json::Value;
use sy_protocol::chat::{ChatRequest, Content, ContentPart, Message};

use crate::ProviderError;

/// OpenAI fields that only tune sampling, storage or billing and have no
/// equivalent elsewhere: dropped, the answer means the same without them.
pub const DROPPED_HINTS: &[&str] = &[
    "logit_bias",
    "service_tier",
    "store",
    "metadata",
    "parallel_tool_calls",
    "prompt_cache_key",
    "safety_identifier",
    "verbosity",
];

/// OpenAI fields whose answer no other dialect can give: refused with a 400.
pub const REFUSED: &[&str] = &[
    "logprobs",
    "top_logprobs",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "functions",
    "function_call",
];

/// Refuses the fields of `REFUSED` (when set to something other than null/false)
/// and `n` > 1; `dialect` names the target in the message.
pub fn check_common(req: &ChatRequest, dialect: &str) -> Result<(), ProviderError> {
    for key in REFUSED {
        if let Some(v) = req.extra.get(*key)
            && !matches!(v, Value::Null | Value::Bool(false))
        {
            return Err(unsupported(dialect, &format!("'{key}'")));
        }
    }
    if req.n.is_some_and(|n| n > 1) {
        return Err(unsupported(dialect, "'n' greater than 1"));
    }
    Ok(())
}

/// The 400 for a field a target cannot honour.
pub fn unsupported(dialect: &str, what: &str) -> ProviderError {
    ProviderError::Unsupported(format!(
        "{what} is not supported when the request is served by a {dialect} model; remove it or route to an OpenAI-compatible model"
    ))
}

/// `data:<mime>;base64,<data>` split into mime type and data.
pub fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    Some((
        if mime.is_empty() {
            "application/octet-stream"
        } else {
            mime
        },
        data,
    ))
}

/// A message's text parts joined by newlines (non-text parts refused).
pub fn plain_text(m: &Message, dialect: &str, at: &str) -> Result<String, ProviderError> {
    match &m.content {
        None => Ok(String::new()),
        Some(Content::Text(s)) => Ok(s.clone()),
        Some(Content::Parts(parts)) => {
            let mut out = Vec::new();
            for p in parts {
                match p {
                    ContentPart::Text { text, .. } => out.push(text.as_str()),
                    ContentPart::Refusal { refusal } => out.push(refusal.as_str()),
                    _ => return Err(unsupported(dialect, &format!("a non-text part in {at}"))),
                }
            }
            Ok(out.join("\n"))
        }
    }
}

/// Thinking budget in tokens: the exact one an Anthropic client gave, else one
/// derived from `reasoning_effort` (minimal: none, low 1024, medium 4096, high 16384).
pub fn thinking_budget(req: &ChatRequest) -> Option<u32> {
    if let Some(b) = req.thinking_budget {
        return Some(b);
    }
    match req.reasoning_effort.as_deref()? {
        "low" => Some(1024),
        "medium" => Some(4096),
        "high" => Some(16384),
        _ => None,
    }
}

/// The answer's output cap: `max_completion_tokens`, else `max_tokens`.
pub fn max_tokens(req: &ChatRequest) -> Option<u32> {
    req.max_completion_tokens.or(req.max_tokens)
}

/// Tool arguments (a JSON string) as a JSON object for dialects that take objects.
pub fn arguments_object(args: &str, dialect: &str) -> Result<Value, ProviderError> {
    if args.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(ProviderError::Unsupported(format!(
            "tool call arguments must be a JSON object for {dialect} models"
        ))),
    }
}

/// Stop sequences as a list.
pub fn stops(req: &ChatRequest) -> Option<Vec<String>> {
    use sy_protocol::chat::Stop;
    match &req.stop {
        None => None,
        Some(Stop::One(s)) => Some(vec![s.clone()]),
        Some(Stop::Many(v)) => Some(v.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_split() {
        assert_eq!(
            data_url("data:image/png;base64,AAAA"),
            Some(("image/png", "AAAA"))
        );
        assert_eq!(data_url("https://x/y.png"), None);
        assert_eq!(data_url("data:text/plain,hello"), None);
    }

    #[test]
    fn refused_fields_name_themselves() {
        let req: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": true
        }))
        .unwrap();
        let e = check_common(&req, "Anthropic").unwrap_err();
        assert!(e.to_string().contains("'logprobs'"), "{e}");
        let req: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": false, "seed": 3
        }))
        .unwrap();
        assert!(check_common(&req, "Anthropic").is_ok());
    }
}
