//! `POST /v1/responses`: OpenAI's Responses API, stateless (nothing is stored:
//! `previous_response_id` and `background` are refused). Input items (messages,
//! `function_call`, `function_call_output`) are translated to the canonical
//! chat model; the answer is rendered as a `response` object or as the Responses
//! streaming events (`response.created` … `response.completed`). Rules are in
//! docs/translation.md.

use bytes::Bytes;
use serde_json::{Map, Value, json};
use sy_protocol::TokenUsage;
use sy_protocol::chat::{
    ChatRequest, ChoiceDelta, Content, ContentPart, FunctionCall, FunctionDef, ImageUrl, Message,
    Role, Tool, ToolCall,
};

use crate::ApiError;
use crate::relay::{AggregatedChoice, StreamEncoder};
use crate::validate::{need_str, opt_bool, opt_f64, opt_str};
use sy_protocol::ResponseMeta;

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

/// Token usage in the Responses API's shape.
pub fn usage(u: Option<&TokenUsage>) -> Value {
    let u = u.copied().unwrap_or_default();
    json!({
        "input_tokens": u.prompt_tokens(),
        "input_tokens_details": {"cached_tokens": u.cached_input_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total_tokens(),
    })
}

fn response_id(names: &ResponseMeta) -> String {
    format!(
        "resp_{}",
        names
            .id()
            .trim_start_matches("chatcmpl-")
            .trim_start_matches("msg_")
    )
}

/// The `response` object around `output`.
fn envelope(
    names: &ResponseMeta,
    status: &str,
    output: Vec<Value>,
    finish: Option<&str>,
    u: Option<&TokenUsage>,
) -> Value {
    let incomplete = match finish {
        Some("length") => json!({"reason": "max_output_tokens"}),
        Some("content_filter") => json!({"reason": "content_filter"}),
        _ => Value::Null,
    };
    let status = if status == "completed" && !incomplete.is_null() {
        "incomplete"
    } else {
        status
    };
    json!({
        "id": response_id(names),
        "object": "response",
        "created_at": names.created(),
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "model": names.model(),
        "output": output,
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "store": false,
        "usage": if status == "in_progress" { Value::Null } else { usage(u) },
    })
}

fn text_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
        "arguments": arguments, "status": status})
}

/// The whole answer as a `response` object.
pub fn body(
    choice: Option<AggregatedChoice>,
    names: &ResponseMeta,
    u: Option<&TokenUsage>,
) -> Vec<u8> {
    let choice = choice.unwrap_or_default();
    let rid = response_id(names);
    let mut output = Vec::new();
    if let Some(text) = choice
        .content
        .as_ref()
        .or(choice.refusal.as_ref())
        .filter(|t| !t.is_empty())
    {
        output.push(text_item(&format!("msg_{rid}"), text, "completed"));
    }
    for (i, t) in choice.tool_calls.iter().enumerate() {
        output.push(call_item(
            &format!("fc_{rid}_{i}"),
            &t.id,
            &t.name,
            &t.arguments,
            "completed",
        ));
    }
    serde_json::to_vec(&envelope(
        names,
        "completed",
        output,
        choice.finish_reason.as_deref(),
        u,
    ))
    .unwrap_or_default()
}

#[derive(Debug)]
enum Item {
    Text {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        index: u32,
    },
}

/// Writes the Responses API's streaming events from canonical deltas.
pub struct ResponsesEncoder {
    names: ResponseMeta,
    seq: u64,
    started: bool,
    open: Option<Item>,
    done: Vec<Value>,
    finish: Option<String>,
}

impl ResponsesEncoder {
    /// An encoder naming the response with `names`.
    pub fn new(names: ResponseMeta) -> Self {
        ResponsesEncoder {
            names,
            seq: 0,
            started: false,
            open: None,
            done: Vec::new(),
            finish: None,
        }
    }

    fn event(&mut self, out: &mut Vec<u8>, kind: &str, mut v: Value) {
        v["type"] = json!(kind);
        v["sequence_number"] = json!(self.seq);
        self.seq += 1;
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        let _ = serde_json::to_writer(&mut *out, &v);
        out.extend_from_slice(b"\n\n");
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let r = envelope(&self.names, "in_progress", Vec::new(), None, None);
        self.event(out, "response.created", json!({"response": r}));
        let r = envelope(&self.names, "in_progress", Vec::new(), None, None);
        self.event(out, "response.in_progress", json!({"response": r}));
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        let index = self.done.len();
        let item = match self.open.take() {
            None => return,
            Some(Item::Text { id, text }) => {
                self.event(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index,
                    "content_index": 0, "text": text, "logprobs": []}),
                );
                self.event(out, "response.content_part.done", json!({"item_id": id, "output_index": index,
                    "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}}));
                text_item(&id, &text, "completed")
            }
            Some(Item::Call {
                id,
                call_id,
                name,
                arguments,
                ..
            }) => {
                self.event(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": id,
                    "output_index": index, "arguments": arguments}),
                );
                call_item(&id, &call_id, &name, &arguments, "completed")
            }
        };
        self.event(
            out,
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
        self.done.push(item);
    }

    fn text(&mut self, out: &mut Vec<u8>, delta: &str) {
        let index = self.done.len();
        if !matches!(self.open, Some(Item::Text { .. })) {
            self.close(out);
            let id = format!("msg_{}_{index}", response_id(&self.names));
            self.event(out, "response.output_item.added", json!({"output_index": index,
                "item": {"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []}}));
            self.event(out, "response.content_part.added", json!({"item_id": id, "output_index": index,
                "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}));
            self.open = Some(Item::Text {
                id,
                text: String::new(),
            });
        }
        if let Some(Item::Text { id, text }) = &mut self.open {
            text.push_str(delta);
            let id = id.clone();
            self.event(
                out,
                "response.output_text.delta",
                json!({"item_id": id, "output_index": index,
                "content_index": 0, "delta": delta, "logprobs": []}),
            );
        }
    }
}

impl StreamEncoder for ResponsesEncoder {
    fn chunk(&mut self, choices: &[ChoiceDelta]) -> Bytes {
        let mut out = Vec::with_capacity(256);
        self.start(&mut out);
        for c in choices.iter().filter(|c| c.index == 0) {
            let d = &c.delta;
            for t in [&d.content, &d.refusal].into_iter().flatten() {
                if !t.is_empty() {
                    self.text(&mut out, t);
                }
            }
            for tc in d.tool_calls.iter().flatten() {
                let same =
                    matches!(&self.open, Some(Item::Call { index: i, .. }) if *i == tc.index);
                if !same {
                    self.close(&mut out);
                    let index = self.done.len();
                    let id = format!("fc_{}_{index}", response_id(&self.names));
                    let call_id = tc.id.clone().unwrap_or_default();
                    let name = tc
                        .function
                        .as_ref()
                        .and_then(|f| f.name.clone())
                        .unwrap_or_default();
                    self.event(
                        &mut out,
                        "response.output_item.added",
                        json!({"output_index": index,
                        "item": call_item(&id, &call_id, &name, "", "in_progress")}),
                    );
                    self.open = Some(Item::Call {
                        id,
                        call_id,
                        name,
                        arguments: String::new(),
                        index: tc.index,
                    });
                }
                let args = tc
                    .function
                    .as_ref()
                    .and_then(|f| f.arguments.clone())
                    .unwrap_or_default();
                if !args.is_empty()
                    && let Some(Item::Call { id, arguments, .. }) = &mut self.open
                {
                    arguments.push_str(&args);
                    let id = id.clone();
                    let index = self.done.len();
                    self.event(
                        &mut out,
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": index, "delta": args}),
                    );
                }
            }
            if c.finish_reason.is_some() {
                self.finish.clone_from(&c.finish_reason);
            }
        }
        Bytes::from(out)
    }

    fn finish(&mut self, finish_reason: Option<&str>, u: Option<&TokenUsage>) -> Bytes {
        let mut out = Vec::with_capacity(512);
        self.start(&mut out);
        self.close(&mut out);
        let finish = finish_reason
            .map(str::to_owned)
            .or_else(|| self.finish.clone());
        let r = envelope(
            &self.names,
            "completed",
            std::mem::take(&mut self.done),
            finish.as_deref(),
            u,
        );
        let kind = if r["status"] == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.event(&mut out, kind, json!({"response": r}));
        Bytes::from(out)
    }

    fn error(&mut self, e: &ApiError) -> Bytes {
        let mut out = Vec::new();
        self.event(
            &mut out,
            "error",
            json!({"code": e.code.as_str(), "message": e.message, "param": e.param}),
        );
        Bytes::from(out)
    }
}

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

    #[test]
    fn stream_events_build_items_in_order() {
        let names = ResponseMeta {
            response_id: Some("chatcmpl-1".into()),
            created: Some(5),
            served_model: Some("m".into()),
            system_fingerprint: None,
        };
        let mut enc = ResponsesEncoder::new(names);
        let d = |v: Value| -> ChoiceDelta { serde_json::from_value(v).unwrap() };
        let mut text = String::new();
        for b in [
            enc.chunk(&[d(json!({"index": 0, "delta": {"role": "assistant", "content": "Hi"}}))]),
            enc.chunk(&[d(json!({"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{\"a\""}}]}}))]),
            enc.chunk(&[d(json!({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}, "finish_reason": "tool_calls"}))]),
            enc.finish(None, None),
        ] {
            text.push_str(std::str::from_utf8(&b).unwrap());
        }
        let kinds: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let data = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap();
        let last: Value = serde_json::from_str(data).unwrap();
        assert_eq!(last["response"]["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(last["sequence_number"], 13);
    }
}
