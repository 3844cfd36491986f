//! Answers in the Responses API's format: a whole `response` object, or
//! the stream of `response.*` events that builds its output items.

use crate::error::ApiError;
use crate::relay::{AggregatedChoice, Piece, StreamEncoder, each_piece};
use bytes::Bytes;
use serde_json::{Value, json};
use sy_protocol::ResponseMeta;
use sy_protocol::TokenUsage;
use sy_protocol::chat::ChoiceDelta;

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

impl ResponsesEncoder {
    fn piece(&mut self, out: &mut Vec<u8>, piece: Piece<'_>) {
        match piece {
            // Reasoning text has no item of its own here.
            Piece::Reasoning(_) => {}
            Piece::Text(t) => self.text(out, t),
            Piece::Call {
                index: call,
                id,
                name,
                arguments,
            } => {
                let same = matches!(&self.open, Some(Item::Call { index: i, .. }) if *i == call);
                if !same {
                    self.close(out);
                    let index = self.done.len();
                    let item_id = format!("fc_{}_{index}", response_id(&self.names));
                    let call_id = id.unwrap_or_default().to_owned();
                    let name = name.unwrap_or_default().to_owned();
                    self.event(
                        out,
                        "response.output_item.added",
                        json!({"output_index": index,
                        "item": call_item(&item_id, &call_id, &name, "", "in_progress")}),
                    );
                    self.open = Some(Item::Call {
                        id: item_id,
                        call_id,
                        name,
                        arguments: String::new(),
                        index: call,
                    });
                }
                if !arguments.is_empty()
                    && let Some(Item::Call {
                        id, arguments: all, ..
                    }) = &mut self.open
                {
                    all.push_str(arguments);
                    let id = id.clone();
                    let index = self.done.len();
                    self.event(
                        out,
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": index, "delta": arguments}),
                    );
                }
            }
        }
    }
}

impl StreamEncoder for ResponsesEncoder {
    fn chunk(&mut self, choices: &[ChoiceDelta]) -> Bytes {
        let mut out = Vec::with_capacity(256);
        self.start(&mut out);
        if let Some(f) = each_piece(choices, |p| self.piece(&mut out, p)) {
            self.finish = Some(f.to_owned());
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
