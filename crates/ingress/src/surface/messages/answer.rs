//! Answers in Anthropic's format: a whole `message`, or the stream of
//! events (message_start, content_block_start/delta/stop, message_delta,
//! message_stop; `error` mid-stream), written with `sy_protocol::anthropic`.

use crate::error::ApiError;
use crate::relay::{AggregatedChoice, Piece, StreamEncoder, each_piece};
use bytes::Bytes;
use serde_json::{Value, json};
use sy_protocol::ResponseMeta;
use sy_protocol::TokenUsage;
use sy_protocol::anthropic::{self as wire, Block, BlockDelta, StreamEvent};
use sy_protocol::chat::ChoiceDelta;

/// A canonical finish reason as Anthropic's stop reason.
pub fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Token usage in Anthropic's shape (zeros when the provider reported none).
pub fn usage(u: Option<&TokenUsage>) -> wire::Usage {
    wire::Usage::from_tokens(u)
}

fn message_id(names: &ResponseMeta) -> String {
    if names.id().starts_with("msg_") {
        names.id().to_owned()
    } else {
        format!("msg_{}", names.id().trim_start_matches("chatcmpl-"))
    }
}

/// The answer as an Anthropic message (empty content, `stop_reason` null: the
/// start of a stream).
fn answer(names: &ResponseMeta, content: Vec<Block>, stop: Option<&str>) -> wire::Message {
    wire::Message {
        id: Some(message_id(names)),
        kind: "message".into(),
        role: wire::Role::Assistant,
        model: Some(names.model().to_owned()),
        content,
        stop_reason: stop.map(str::to_owned),
        stop_sequence: None,
        usage: usage(None),
    }
}

/// The whole answer as an Anthropic `message`.
pub fn body(
    choice: Option<AggregatedChoice>,
    names: &ResponseMeta,
    u: Option<&TokenUsage>,
) -> Vec<u8> {
    let choice = choice.unwrap_or_default();
    let mut content = Vec::new();
    if let Some(Value::String(t)) = choice.extra.get("reasoning_content") {
        content.push(Block::Thinking {
            thinking: t.clone(),
            signature: Some(String::new()),
        });
    }
    let text = choice.content.or(choice.refusal).unwrap_or_default();
    if !text.is_empty() {
        content.push(Block::text(text));
    }
    for t in choice.tool_calls {
        let input = serde_json::from_str::<Value>(&t.arguments).unwrap_or_else(|_| json!({}));
        content.push(Block::ToolUse {
            id: t.id,
            name: t.name,
            input,
        });
    }
    let reason = stop_reason(choice.finish_reason.as_deref());
    let mut m = answer(names, content, Some(reason));
    m.usage = usage(u);
    serde_json::to_vec(&m).unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Open {
    None,
    Text,
    Thinking,
    Tool(u32),
}

/// Writes Anthropic's stream events from canonical deltas.
pub struct MessagesEncoder {
    names: ResponseMeta,
    started: bool,
    open: Open,
    index: u32,
    finish: Option<String>,
}

impl MessagesEncoder {
    /// An encoder naming the message with `names`.
    pub fn new(names: ResponseMeta) -> Self {
        MessagesEncoder {
            names,
            started: false,
            open: Open::None,
            index: 0,
            finish: None,
        }
    }

    fn event(out: &mut Vec<u8>, name: &str, v: &impl serde::Serialize) {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        let _ = serde_json::to_writer(&mut *out, v);
        out.extend_from_slice(b"\n\n");
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        Self::event(
            out,
            "message_start",
            &StreamEvent::MessageStart {
                message: answer(&self.names, Vec::new(), None),
            },
        );
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if self.open != Open::None {
            Self::event(
                out,
                "content_block_stop",
                &StreamEvent::ContentBlockStop {
                    index: self.index.into(),
                },
            );
            self.index += 1;
            self.open = Open::None;
        }
    }

    fn open(&mut self, out: &mut Vec<u8>, kind: Open, block: Block) {
        self.close(out);
        self.open = kind;
        Self::event(
            out,
            "content_block_start",
            &StreamEvent::ContentBlockStart {
                index: self.index.into(),
                content_block: block,
            },
        );
    }

    fn delta(&self, out: &mut Vec<u8>, delta: BlockDelta) {
        Self::event(
            out,
            "content_block_delta",
            &StreamEvent::ContentBlockDelta {
                index: self.index.into(),
                delta,
            },
        );
    }
}

impl MessagesEncoder {
    fn piece(&mut self, out: &mut Vec<u8>, piece: Piece<'_>) {
        match piece {
            Piece::Reasoning(t) => {
                if self.open != Open::Thinking {
                    self.open(
                        out,
                        Open::Thinking,
                        Block::Thinking {
                            thinking: String::new(),
                            signature: None,
                        },
                    );
                }
                self.delta(
                    out,
                    BlockDelta::ThinkingDelta {
                        thinking: t.to_owned(),
                    },
                );
            }
            Piece::Text(t) => {
                if self.open != Open::Text {
                    self.open(out, Open::Text, Block::text(""));
                }
                self.delta(out, BlockDelta::TextDelta { text: t.to_owned() });
            }
            Piece::Call {
                index,
                id,
                name,
                arguments,
            } => {
                if self.open != Open::Tool(index) {
                    self.open(
                        out,
                        Open::Tool(index),
                        Block::ToolUse {
                            id: id.unwrap_or_default().to_owned(),
                            name: name.unwrap_or_default().to_owned(),
                            input: json!({}),
                        },
                    );
                }
                if !arguments.is_empty() {
                    self.delta(
                        out,
                        BlockDelta::InputJsonDelta {
                            partial_json: arguments.to_owned(),
                        },
                    );
                }
            }
        }
    }
}

impl StreamEncoder for MessagesEncoder {
    fn chunk(&mut self, choices: &[ChoiceDelta]) -> Bytes {
        let mut out = Vec::with_capacity(256);
        self.start(&mut out);
        if let Some(f) = each_piece(choices, |p| self.piece(&mut out, p)) {
            self.finish = Some(f.to_owned());
        }
        Bytes::from(out)
    }

    fn finish(&mut self, finish_reason: Option<&str>, u: Option<&TokenUsage>) -> Bytes {
        let mut out = Vec::with_capacity(256);
        self.start(&mut out);
        self.close(&mut out);
        let reason = finish_reason.or(self.finish.as_deref());
        Self::event(
            &mut out,
            "message_delta",
            &StreamEvent::MessageDelta {
                delta: wire::MessageEnd {
                    stop_reason: Some(stop_reason(reason).to_owned()),
                    stop_sequence: None,
                },
                usage: usage(u),
            },
        );
        Self::event(&mut out, "message_stop", &StreamEvent::MessageStop);
        Bytes::from(out)
    }

    fn error(&mut self, e: &ApiError) -> Bytes {
        let mut out = Vec::new();
        Self::event(&mut out, "error", &e.anthropic_value());
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> ResponseMeta {
        ResponseMeta {
            response_id: Some("chatcmpl-abc".into()),
            created: Some(1),
            served_model: Some("gpt-x".into()),
            system_fingerprint: None,
        }
    }

    #[test]
    fn stream_events_follow_anthropics_order() {
        let mut enc = MessagesEncoder::new(names());
        let d = |v: Value| -> ChoiceDelta { serde_json::from_value(v).unwrap() };
        let mut text = String::new();
        for b in [
            enc.chunk(&[d(json!({"index": 0, "delta": {"role": "assistant", "content": ""}}))]),
            enc.chunk(&[d(json!({"index": 0, "delta": {"content": "Hi"}}))]),
            enc.chunk(&[d(json!({"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]}}))]),
            enc.chunk(&[d(json!({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":1}"}}]}, "finish_reason": "tool_calls"}))]),
            enc.finish(None, Some(&TokenUsage { input_tokens: 9, output_tokens: 4, ..Default::default() })),
        ] {
            text.push_str(std::str::from_utf8(&b).unwrap());
        }
        let events: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            events,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(text.contains(r#""stop_reason":"tool_use""#));
        assert!(text.contains(r#""partial_json":"{\"a\":1}""#));
        assert!(text.contains(r#""input_tokens":9"#));
        assert!(text.contains(r#""id":"msg_abc""#));
    }

    #[test]
    fn token_usage_renders_in_anthropic_shape_with_cache_reads_and_writes_apart() {
        let u = TokenUsage {
            input_tokens: 10,
            cached_input_tokens: 100,
            cache_write_tokens: 20,
            cache_write_1h_tokens: 0,
            output_tokens: 7,
            reasoning_tokens: 3,
        };
        assert_eq!(
            serde_json::to_value(usage(Some(&u))).unwrap(),
            json!({
                "input_tokens": 10, "output_tokens": 7,
                "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20,
            })
        );
        assert_eq!(
            serde_json::to_value(usage(None)).unwrap(),
            json!({"input_tokens": 0, "output_tokens": 0})
        );
    }
}
