//! Anthropic's Messages API on the wire (<https://docs.anthropic.com/en/api/messages>),
//! as typed serde structs: the request Switchyard sends to Anthropic (built by
//! sy-providers' adapter), and the message and stream events Anthropic answers
//! with, which the adapter reads and the ingress's Messages surface writes to
//! its own clients. Reading is lenient where Anthropic may add things (an
//! unknown block, delta or event type is [`Block::Other`], [`BlockDelta::Other`],
//! [`StreamEvent::Other`]; missing fields take their defaults); writing is
//! exact (the fields Anthropic always sends are always written, `null` included).
//!
//! The mock provider keeps its own, independent reading of this format, so
//! that a mistake here cannot hide behind both sides agreeing.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /v1/messages`: what Switchyard sends to Anthropic, and what the
/// Messages surface reads from its clients (which may write a message's
/// content or the system prompt as one string, and a tool result's content
/// as text blocks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesRequest {
    /// The upstream model.
    pub model: String,
    /// Extended thinking, with its token budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<Thinking>,
    /// The output cap (thinking included).
    pub max_tokens: u32,
    /// The turns, alternating user and assistant.
    pub messages: Vec<InputMessage>,
    /// The system prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<System>,
    /// Sampling temperature, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Top-k sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Custom stop sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<String>>,
    /// The end user, for Anthropic's abuse detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// How the model must use the tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// The client's service tier (read, not passed on).
    #[serde(default, skip_serializing)]
    pub service_tier: Option<Value>,
}

/// `thinking`: `{"type": "enabled", "budget_tokens": N}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Thinking {
    /// Thinking on, within this many tokens.
    Enabled {
        /// The budget.
        budget_tokens: u32,
    },
    /// Thinking off, or a kind this version does not know (read only).
    #[serde(other, skip_serializing)]
    Off,
}

/// `system`: one string, or blocks (when one carries a caching breakpoint).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum System {
    /// The whole system prompt.
    Text(String),
    /// Text blocks, each with its own breakpoint.
    Blocks(Vec<Block>),
}

/// `metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// An opaque id of the end user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// The two roles of a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The client's turn (tool results included).
    User,
    /// The model's turn.
    Assistant,
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputMessage {
    /// Whose turn.
    pub role: Role,
    /// Its blocks (a client may send one string: one text block).
    #[serde(deserialize_with = "string_or_blocks")]
    pub content: Vec<Block>,
}

/// A content block, in a request or an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    /// Text.
    Text {
        /// The text.
        text: String,
        /// A caching breakpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
    /// An image.
    Image {
        /// Where it is.
        source: ImageSource,
        /// A caching breakpoint (read, not passed on).
        #[serde(default, skip_serializing)]
        cache_control: Option<Value>,
    },
    /// A call of a tool by the model.
    ToolUse {
        /// Its id.
        id: String,
        /// The tool.
        name: String,
        /// The arguments, a JSON object.
        #[serde(default = "empty_object")]
        input: Value,
    },
    /// A tool's result, in a user turn.
    ToolResult {
        /// The call it answers.
        tool_use_id: String,
        /// What the tool returned (a client may send text blocks: joined by
        /// newlines).
        #[serde(default, deserialize_with = "text_of_blocks")]
        content: String,
        /// The tool failed (read; Switchyard prefixes the content with `Error: `).
        #[serde(default, skip_serializing)]
        is_error: Option<bool>,
        /// A caching breakpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
    /// The model's reasoning.
    Thinking {
        /// The reasoning text.
        #[serde(default)]
        thinking: String,
        /// Anthropic's signature of it (empty in an answer Switchyard writes,
        /// absent from a block's start).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
    },
    /// Reasoning Anthropic withheld (read only).
    #[serde(skip_serializing)]
    RedactedThinking {
        /// The encrypted reasoning.
        #[serde(default)]
        data: String,
    },
    /// A block type this version does not know (read only).
    #[serde(other, skip_serializing)]
    Other,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

impl Block {
    /// A text block.
    pub fn text(text: impl Into<String>) -> Self {
        Block::Text {
            text: text.into(),
            cache_control: None,
        }
    }
}

/// An image block's source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageSource {
    /// Inline bytes.
    Base64 {
        /// `image/png`, … (PNG when a client leaves it out).
        #[serde(default = "png")]
        media_type: String,
        /// Base64 data.
        data: String,
    },
    /// A URL Anthropic fetches.
    Url {
        /// The URL.
        url: String,
    },
}

fn png() -> String {
    "image/png".into()
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// `custom` (or absent) for a client's tool; Anthropic's server tools
    /// have their own (`web_search_20250305`, …).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its arguments' JSON schema.
    #[serde(default)]
    pub input_schema: Value,
    /// A caching breakpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<Value>,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolChoice {
    /// How.
    #[serde(rename = "type")]
    pub kind: ToolChoiceKind,
    /// The tool, for [`ToolChoiceKind::Tool`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// At most one tool call per turn.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_parallel_tool_use: bool,
}

/// The kinds of `tool_choice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoiceKind {
    /// The model decides.
    Auto,
    /// Some tool must be called.
    Any,
    /// The named tool must be called.
    Tool,
    /// No tool may be called.
    None,
}

/// Token usage as Anthropic counts it: `input_tokens` excludes cache reads
/// and writes. Each count is optional: a stream's events carry some of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens neither read from nor written to the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// Prompt tokens read from the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
    /// Prompt tokens written to the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
    /// The cache writes by how long they are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation: Option<CacheCreation>,
}

/// `usage.cache_creation`: cache writes by time to live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheCreation {
    /// Kept five minutes.
    #[serde(default)]
    pub ephemeral_5m_input_tokens: u64,
    /// Kept an hour.
    #[serde(default)]
    pub ephemeral_1h_input_tokens: u64,
}

impl Usage {
    /// The counts `later` has replace these (a stream reports in parts).
    pub fn merge(&mut self, later: Usage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_creation = later.cache_creation.or(self.cache_creation);
    }

    /// As Switchyard's token classes.
    pub fn tokens(&self) -> crate::TokenUsage {
        crate::TokenUsage {
            input_tokens: self.input_tokens.unwrap_or(0),
            cached_input_tokens: self.cache_read_input_tokens.unwrap_or(0),
            cache_write_tokens: self.cache_creation_input_tokens.unwrap_or(0),
            cache_write_1h_tokens: self.cache_creation.map_or(0, |c| {
                c.ephemeral_1h_input_tokens
                    .min(self.cache_creation_input_tokens.unwrap_or(0))
            }),
            output_tokens: self.output_tokens.unwrap_or(0),
            reasoning_tokens: 0,
        }
    }

    /// From Switchyard's token classes (`None`: zeros, no cache counts).
    pub fn from_tokens(u: Option<&crate::TokenUsage>) -> Self {
        match u {
            None => Usage {
                input_tokens: Some(0),
                output_tokens: Some(0),
                ..Usage::default()
            },
            Some(u) => Usage {
                input_tokens: Some(u.input_tokens),
                output_tokens: Some(u.output_tokens),
                cache_read_input_tokens: Some(u.cached_input_tokens),
                cache_creation_input_tokens: Some(u.cache_write_tokens),
                cache_creation: (u.cache_write_1h_tokens > 0).then_some(CacheCreation {
                    ephemeral_5m_input_tokens: u
                        .cache_write_tokens
                        .saturating_sub(u.cache_write_1h_tokens),
                    ephemeral_1h_input_tokens: u.cache_write_1h_tokens,
                }),
            },
        }
    }
}

/// A whole answer (`"type": "message"`), or the start of a streamed one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `msg_…`.
    #[serde(default)]
    pub id: Option<String>,
    /// Always `message`.
    #[serde(rename = "type", default = "message_type")]
    pub kind: String,
    /// Always the assistant.
    #[serde(default = "assistant")]
    pub role: Role,
    /// The model that answered.
    #[serde(default)]
    pub model: Option<String>,
    /// The answer's blocks.
    #[serde(default)]
    pub content: Vec<Block>,
    /// Why it ended (`null` while a stream runs).
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// The stop sequence that ended it.
    #[serde(default)]
    pub stop_sequence: Option<String>,
    /// Its tokens.
    #[serde(default)]
    pub usage: Usage,
}

fn message_type() -> String {
    "message".into()
}

fn assistant() -> Role {
    Role::Assistant
}

/// One server-sent event of a streamed answer (its `data`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// The answer starts (empty content).
    MessageStart {
        /// The message so far.
        message: Message,
    },
    /// A block starts.
    ContentBlockStart {
        /// Its position.
        #[serde(default)]
        index: u64,
        /// The block, empty or nearly.
        content_block: Block,
    },
    /// More of a block.
    ContentBlockDelta {
        /// The block's position.
        #[serde(default)]
        index: u64,
        /// What is added.
        delta: BlockDelta,
    },
    /// A block ends.
    ContentBlockStop {
        /// Its position.
        #[serde(default)]
        index: u64,
    },
    /// The answer's ending, and its usage.
    MessageDelta {
        /// Why it ended.
        #[serde(default)]
        delta: MessageEnd,
        /// Usage (cumulative).
        #[serde(default)]
        usage: Usage,
    },
    /// The end of the stream.
    MessageStop,
    /// Keep-alive.
    Ping,
    /// An error ending the stream.
    Error {
        /// What went wrong.
        #[serde(default)]
        error: ErrorDetail,
    },
    /// An event type this version does not know (read only).
    #[serde(other, skip_serializing)]
    Other,
}

/// What a `content_block_delta` adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockDelta {
    /// Text.
    TextDelta {
        /// The text.
        #[serde(default)]
        text: String,
    },
    /// A piece of a tool call's JSON arguments.
    InputJsonDelta {
        /// The piece.
        #[serde(default)]
        partial_json: String,
    },
    /// Reasoning text.
    ThinkingDelta {
        /// The text.
        #[serde(default)]
        thinking: String,
    },
    /// A delta type this version does not know (read only).
    #[serde(other, skip_serializing)]
    Other,
}

/// A `message_delta`'s `delta`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageEnd {
    /// Why the answer ended.
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// The stop sequence that ended it.
    #[serde(default)]
    pub stop_sequence: Option<String>,
}

/// An error event's `error`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// `overloaded_error`, `rate_limit_error`, …
    #[serde(rename = "type", default)]
    pub kind: String,
    /// What happened.
    #[serde(default)]
    pub message: String,
}

/// Errors the request readers below raise name where they happened, below
/// the block serde is reading (which it reads whole, so its path ends there),
/// before this separator (e.g. `content.2.type`): the Messages surface turns
/// them into Anthropic's dotted paths.
pub const AT: char = '\u{1f}';

/// A message's content: one string (a text block) or a list of blocks.
fn string_or_blocks<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<Block>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<Block>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string or a list of content blocks")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(vec![Block::text(s)])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
        }
    }
    de.deserialize_any(V)
}

impl<'de> Deserialize<'de> for System {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = System;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of text blocks")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(System::Text(s.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(System::Blocks)
            }
        }
        de.deserialize_any(V)
    }
}

/// A tool result's content: a string, or text blocks joined by newlines.
fn text_of_blocks<'de, D: serde::Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string or a list of text blocks")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(s.to_owned())
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(String::new())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out: Vec<String> = Vec::new();
            while let Some(b) = seq.next_element::<Block>()? {
                match b {
                    Block::Text { text, .. } => out.push(text),
                    _ => {
                        return Err(serde::de::Error::custom(format!(
                            "content.{}.type{AT}only text blocks are supported here",
                            out.len()
                        )));
                    }
                }
            }
            Ok(out.join("\n"))
        }
    }
    de.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_types_are_read_as_other_and_missing_fields_default() {
        let e: StreamEvent =
            serde_json::from_value(json!({"type": "content_block_start", "index": 2,
                "content_block": {"type": "server_tool_use", "id": "x"}}))
            .unwrap();
        assert_eq!(
            e,
            StreamEvent::ContentBlockStart {
                index: 2,
                content_block: Block::Other
            }
        );
        let e: StreamEvent = serde_json::from_value(json!({"type": "brand_new"})).unwrap();
        assert_eq!(e, StreamEvent::Other);
        let m: Message = serde_json::from_value(json!({"id": "msg_1"})).unwrap();
        assert_eq!((m.kind.as_str(), m.role), ("message", Role::Assistant));
        assert!(m.content.is_empty() && m.usage == Usage::default());
    }

    #[test]
    fn a_written_message_start_has_anthropics_exact_shape() {
        let e = StreamEvent::MessageStart {
            message: Message {
                id: Some("msg_1".into()),
                kind: message_type(),
                role: Role::Assistant,
                model: Some("claude".into()),
                content: Vec::new(),
                stop_reason: None,
                stop_sequence: None,
                usage: Usage::from_tokens(None),
            },
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
                "role": "assistant", "model": "claude", "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}})
        );
    }
}
