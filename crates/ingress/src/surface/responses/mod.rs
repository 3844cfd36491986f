//! `POST /v1/responses`: OpenAI's Responses API, stateless (nothing is stored:
//! `previous_response_id` and `background` are refused). Input items (messages,
//! `function_call`, `function_call_output`) are translated to the canonical
//! chat model; the answer is rendered as a `response` object or as the Responses
//! streaming events (`response.created` … `response.completed`). Rules are in
//! docs/translation.md.

use serde_json::{Map, Value, json};
use sy_protocol::chat::{
    ChatRequest, Content, ContentPart, FunctionCall, FunctionDef, ImageUrl, Message, Role, Tool,
    ToolCall,
};

use crate::error::ApiError;
use crate::validate::{need_str, opt_bool, opt_f64, opt_str};

/// A field of the wrong type, in OpenAI's words.
fn wrong(key: &str, what: &str) -> ApiError {
    invalid(key, format!("Invalid type for '{key}': expected {what}."))
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message)
}

/// Top-level fields Switchyard reads or safely ignores; anything else is refused.
const KNOWN: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "temperature",
    "top_p",
    "stream",
    "text",
    "reasoning",
    "parallel_tool_calls",
    "store",
    "metadata",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
    "truncation",
    "include",
    "stream_options",
];

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

fn content_of(v: &Value, at: &str) -> Result<Option<Content>, ApiError> {
    match v {
        Value::String(s) => Ok(Some(Content::Text(s.clone()))),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                match p["type"].as_str() {
                    Some("input_text" | "output_text" | "text") => out.push(ContentPart::Text {
                        text: p["text"]
                            .as_str()
                            .ok_or_else(|| wrong(&format!("{at}[{i}].text"), "a string"))?
                            .to_owned(),
                        cache_control: None,
                    }),
                    Some("refusal") => out.push(ContentPart::Refusal {
                        refusal: p["refusal"].as_str().unwrap_or("").to_owned(),
                    }),
                    Some("input_image") => {
                        let url = p["image_url"].as_str().ok_or_else(|| {
                            invalid(
                                &format!("{at}[{i}].image_url"),
                                "input_image needs an image_url (file_id needs stored files, which Switchyard does not keep)",
                            )
                        })?;
                        out.push(ContentPart::ImageUrl {
                            image_url: ImageUrl {
                                url: url.to_owned(),
                                detail: p["detail"].as_str().map(str::to_owned),
                            },
                        });
                    }
                    other => {
                        return Err(invalid(
                            &format!("{at}[{i}].type"),
                            format!(
                                "Content parts of type {:?} are not supported by Switchyard.",
                                other.unwrap_or("(none)")
                            ),
                        ));
                    }
                }
            }
            Ok(match out.as_slice() {
                [
                    ContentPart::Text {
                        text,
                        cache_control: None,
                    },
                ] => Some(Content::Text(text.clone())),
                _ => Some(Content::Parts(out)),
            })
        }
        _ => Err(invalid(
            at,
            format!("'{at}' must be a string or a list of content parts."),
        )),
    }
}

/// Parses a Responses API body into the canonical request.
pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let (v, unknown) = crate::validate::json_object(body, KNOWN)?;
    if let Some(k) = unknown {
        let why = match k.as_str() {
            "previous_response_id" | "conversation" | "background" | "prompt" => {
                "Switchyard's Responses API is stateless: send the whole conversation in 'input'."
            }
            _ => "This parameter is not supported by Switchyard.",
        };
        return Err(invalid(&k, format!("Unsupported parameter: '{k}'. {why}")));
    }
    let model = v["model"]
        .as_str()
        .ok_or_else(|| invalid("model", "Missing required parameter: 'model'."))?
        .to_owned();
    let mut messages = Vec::new();
    if let Some(i) = opt_str(&v["instructions"], "instructions", wrong)? {
        messages.push(message(Role::System, Some(Content::Text(i.to_owned()))));
    }
    match &v["input"] {
        Value::String(s) => messages.push(message(Role::User, Some(Content::Text(s.clone())))),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("input[{i}]");
                match item["type"].as_str() {
                    None | Some("message") => {
                        let role = match item["role"].as_str() {
                            Some("user") => Role::User,
                            Some("assistant") => Role::Assistant,
                            Some("system") => Role::System,
                            Some("developer") => Role::Developer,
                            _ => {
                                return Err(invalid(
                                    &format!("{at}.role"),
                                    format!(
                                        "'{at}.role' must be user, assistant, system or developer."
                                    ),
                                ));
                            }
                        };
                        let content = content_of(&item["content"], &format!("{at}.content"))?;
                        messages.push(message(role, content));
                    }
                    Some("function_call") => {
                        let call = ToolCall {
                            id: need_str(&item["call_id"], &format!("{at}.call_id"), wrong)?
                                .to_owned(),
                            kind: "function".into(),
                            function: FunctionCall {
                                name: need_str(&item["name"], &format!("{at}.name"), wrong)?
                                    .to_owned(),
                                arguments: opt_str(
                                    &item["arguments"],
                                    &format!("{at}.arguments"),
                                    wrong,
                                )?
                                .unwrap_or("{}")
                                .to_owned(),
                            },
                        };
                        // Consecutive calls belong to one assistant turn.
                        match messages.last_mut() {
                            Some(m) if m.role == Role::Assistant && m.tool_calls.is_some() => {
                                m.tool_calls.get_or_insert_with(Vec::new).push(call);
                            }
                            _ => {
                                let mut m = message(Role::Assistant, None);
                                m.tool_calls = Some(vec![call]);
                                messages.push(m);
                            }
                        }
                    }
                    Some("function_call_output") => {
                        let output = match &item["output"] {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        let mut m = message(Role::Tool, Some(Content::Text(output)));
                        m.tool_call_id = Some(
                            need_str(&item["call_id"], &format!("{at}.call_id"), wrong)?.to_owned(),
                        );
                        messages.push(m);
                    }
                    // A reasoning item is the provider's own state; nothing else can read it.
                    Some("reasoning") => {}
                    Some(other) => {
                        return Err(invalid(
                            &format!("{at}.type"),
                            format!(
                                "Input items of type '{other}' are not supported by Switchyard."
                            ),
                        ));
                    }
                }
            }
        }
        Value::Null => return Err(invalid("input", "Missing required parameter: 'input'.")),
        _ => {
            return Err(invalid(
                "input",
                "'input' must be a string or a list of items.",
            ));
        }
    }
    let tools = match &v["tools"] {
        Value::Null => None,
        Value::Array(list) => {
            let mut out = Vec::new();
            for (i, t) in list.iter().enumerate() {
                if t["type"] != "function" {
                    return Err(invalid(
                        &format!("tools[{i}].type"),
                        format!(
                            "Only function tools are supported by Switchyard, not '{}'.",
                            t["type"].as_str().unwrap_or("?")
                        ),
                    ));
                }
                out.push(Tool {
                    kind: "function".into(),
                    function: FunctionDef {
                        name: need_str(&t["name"], &format!("tools[{i}].name"), wrong)?.to_owned(),
                        description: opt_str(
                            &t["description"],
                            &format!("tools[{i}].description"),
                            wrong,
                        )?
                        .map(str::to_owned),
                        parameters: Some(t["parameters"].clone()).filter(|p| !p.is_null()),
                        strict: opt_bool(&t["strict"], &format!("tools[{i}].strict"), wrong)?,
                    },
                    cache_control: None,
                });
            }
            Some(out)
        }
        _ => return Err(invalid("tools", "'tools' must be a list.")),
    };
    let tool_choice = match &v["tool_choice"] {
        Value::Null => None,
        Value::String(s) => Some(json!(s)),
        tc if tc["type"] == "function" => {
            Some(json!({"type": "function", "function": {"name": tc["name"]}}))
        }
        _ => return Err(invalid("tool_choice", "Unsupported 'tool_choice'.")),
    };
    let response_format = match &v["text"]["format"] {
        Value::Null => None,
        f => match f["type"].as_str() {
            Some("text") => None,
            Some("json_object") => Some(json!({"type": "json_object"})),
            Some("json_schema") => Some(json!({"type": "json_schema", "json_schema": {
                "name": f["name"], "schema": f["schema"], "strict": f["strict"]}})),
            _ => {
                return Err(invalid(
                    "text.format.type",
                    "Unsupported 'text.format.type'.",
                ));
            }
        },
    };
    let mut extra = Map::new();
    if let Some(p) = opt_bool(&v["parallel_tool_calls"], "parallel_tool_calls", wrong)? {
        extra.insert("parallel_tool_calls".into(), json!(p));
    }
    let max_output = match &v["max_output_tokens"] {
        Value::Null => None,
        m => Some(
            m.as_u64()
                .filter(|m| *m >= 1)
                .and_then(|m| u32::try_from(m).ok())
                .ok_or_else(|| {
                    invalid(
                        "max_output_tokens",
                        "'max_output_tokens' must be a positive integer.",
                    )
                })?,
        ),
    };
    Ok(ChatRequest {
        model,
        messages,
        stream: opt_bool(&v["stream"], "stream", wrong)?,
        stream_options: None,
        temperature: opt_f64(&v["temperature"], "temperature", wrong)?,
        top_p: opt_f64(&v["top_p"], "top_p", wrong)?,
        max_tokens: None,
        max_completion_tokens: max_output,
        stop: None,
        seed: None,
        user: opt_str(&v["user"], "user", wrong)?
            .or(opt_str(
                &v["safety_identifier"],
                "safety_identifier",
                wrong,
            )?)
            .map(str::to_owned),
        n: None,
        tools,
        tool_choice,
        response_format,
        reasoning_effort: v["reasoning"]["effort"].as_str().map(str::to_owned),
        top_k: None,
        thinking_budget: None,
        extra,
    })
}

mod answer;
pub use answer::*;

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn input_items_become_messages() {
        let body = json!({
            "model": "gpt-4o-mini",
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"},
                    {"type": "input_image", "image_url": "https://x.test/a.png"}]},
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "rain"},
                {"type": "message", "role": "user", "content": "thanks"}
            ],
            "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "w"},
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
            "reasoning": {"effort": "low"},
            "max_output_tokens": 50,
            "store": true
        });
        let req = parse(body.to_string().as_bytes()).unwrap();
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            v["messages"][1]["content"][1]["image_url"]["url"],
            "https://x.test/a.png"
        );
        assert_eq!(v["messages"][2]["tool_calls"][0]["id"], "c1");
        assert_eq!(
            v["messages"][3],
            json!({"role": "tool", "content": "rain", "tool_call_id": "c1"})
        );
        assert_eq!(
            v["messages"][4],
            json!({"role": "user", "content": "thanks"})
        );
        assert_eq!(v["tools"][0]["function"]["name"], "w");
        assert_eq!(v["tool_choice"]["function"]["name"], "w");
        assert_eq!(
            v["response_format"]["json_schema"]["schema"],
            json!({"type": "object"})
        );
        assert_eq!(v["max_completion_tokens"], 50);
        assert_eq!(v["reasoning_effort"], "low");
    }

    #[test]
    fn stateful_and_unknown_fields_are_refused() {
        for (k, v) in [
            ("previous_response_id", json!("resp_1")),
            ("background", json!(true)),
            ("colour", json!(1)),
        ] {
            let mut b = json!({"model": "m", "input": "x"});
            b[k] = v;
            let e = parse(b.to_string().as_bytes()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(k));
        }
        let e = parse(br#"{"model":"m","input":"x","tools":[{"type":"web_search"}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
    }
}
