//! Anthropic Messages: `POST {base}/messages` with `x-api-key` and
//! `anthropic-version`, top-level `system`, required `max_tokens`, content blocks,
//! `tool_use` / `tool_result`, and its SSE events (message_start,
//! content_block_start/delta/stop, message_delta, message_stop, ping, error).
//! Wire format: <https://docs.anthropic.com/en/api/messages>.
//!
//! Usage maps onto [`TokenUsage`] class by class: Anthropic's `input_tokens`
//! already excludes cache reads (`cache_read_input_tokens`) and writes
//! (`cache_creation_input_tokens`).

use futures::StreamExt;
use http::HeaderMap;
use http::header::HeaderName;
use serde_json::{Map, Value, json};
use sy_config::{ProviderConfig, ProviderKind};
use sy_protocol::TokenUsage;
use sy_protocol::anthropic::{
    self as wire, Block, BlockDelta, ImageSource, InputMessage, MessagesRequest, Metadata,
    Role as WireRole, StreamEvent, System, Thinking, Tool, ToolChoice, ToolChoiceKind, Usage,
};
use sy_protocol::chat::{
    ChatRequest, ChoiceDelta, Content, ContentPart, Delta, FunctionCallDelta, Message, Role,
    ToolCallDelta,
};

use crate::call::{self, Decoder, Step};
use crate::error::ErrorBody;
use crate::sse::SseEvent;
use crate::translate::{self, unsupported};
use crate::{
    CallContext, Chunk, ChunkStream, Embeddings, Images, Provider, ProviderError, Reranked,
    ResponseMeta,
};
use sy_protocol::embeddings::EmbeddingsRequest;
use sy_protocol::images::ImagesRequest;
use sy_protocol::rerank::RerankRequest;

const DIALECT: &str = "Anthropic";

/// An Anthropic Messages provider.
#[derive(Debug, Clone)]
pub struct AnthropicAdapter {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    default_max_tokens: u32,
}

/// Anthropic's API key header.
const AUTH: call::Auth = call::Auth::Header("x-api-key");

impl AnthropicAdapter {
    /// Builds the adapter for a provider entry.
    pub fn from_config(config: &ProviderConfig) -> Result<Self, ProviderError> {
        let credential = call::entry_credential(config, AUTH);
        let mut headers = call::headers(config, credential)?;
        let version = config.api_version.as_deref().unwrap_or("2023-06-01");
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            call::header_value(version)?,
        );
        Ok(AnthropicAdapter {
            client: call::client(config)?,
            url: format!(
                "{}/messages",
                config.base_url.as_str().trim_end_matches('/')
            ),
            headers,
            default_max_tokens: config.default_max_tokens,
        })
    }
}

impl Provider for AnthropicAdapter {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }

    async fn chat(
        &self,
        req: &ChatRequest,
        cx: &CallContext,
    ) -> Result<ChunkStream, ProviderError> {
        let wire = to_wire(req, &cx.upstream_model, cx.stream, self.default_max_tokens)?;
        let body = serde_json::to_vec(&wire).map_err(|e| ProviderError::Protocol(e.to_string()))?;
        let resp = call::post_json(
            &self.client,
            &self.url,
            call::call_headers(&self.headers, AUTH, cx)?.as_ref(),
            body,
            read_error,
        )
        .await?;
        if cx.stream {
            Ok(call::sse_stream(resp, AnthropicDecoder::default()))
        } else {
            let chunk = from_message(&call::body(resp).await?)?;
            Ok(futures::stream::once(async move { Ok(chunk) }).boxed())
        }
    }

    async fn embed(
        &self,
        _req: &EmbeddingsRequest,
        _cx: &CallContext,
    ) -> Result<Embeddings, ProviderError> {
        Err(ProviderError::Unsupported(
            "Anthropic has no embeddings API; route this model to an OpenAI-compatible, Gemini or Cohere embedding model".into(),
        ))
    }

    async fn rerank(
        &self,
        _req: &RerankRequest,
        _cx: &CallContext,
    ) -> Result<Reranked, ProviderError> {
        Err(ProviderError::Unsupported(
            "Anthropic has no rerank API; route this model to a Cohere or OpenAI-compatible rerank model".into(),
        ))
    }

    async fn images(
        &self,
        _req: &ImagesRequest,
        _cx: &CallContext,
    ) -> Result<Images, ProviderError> {
        Err(ProviderError::Unsupported(
            "Anthropic has no image generation API; route this model to an OpenAI-compatible or Gemini image model".into(),
        ))
    }
}

/// Anthropic's error body: `{"type":"error","error":{"type","message"}}`.
pub fn read_error(raw: &[u8]) -> ErrorBody {
    call::read_error_fields(raw, &[&["error", "message"]], &[&["error", "type"]])
}

fn push_block(messages: &mut Vec<InputMessage>, role: WireRole, block: Block) {
    match messages.last_mut() {
        Some(last) if last.role == role => last.content.push(block),
        _ => messages.push(InputMessage {
            role,
            content: vec![block],
        }),
    }
}

fn image_block(url: &str) -> Block {
    let source = match translate::data_url(url) {
        Some((mime, data)) => ImageSource::Base64 {
            media_type: mime.to_owned(),
            data: data.to_owned(),
        },
        None => ImageSource::Url {
            url: url.to_owned(),
        },
    };
    Block::Image {
        source,
        cache_control: None,
    }
}

/// A text block, with its caching breakpoint if any.
fn text_block(text: &str, cache_control: Option<&Value>) -> Block {
    Block::Text {
        text: text.to_owned(),
        cache_control: cache_control.cloned(),
    }
}

/// The last caching breakpoint among a message's text parts (for messages sent
/// as one block: assistant text, tool results).
fn last_mark(m: &Message) -> Option<&Value> {
    match &m.content {
        Some(Content::Parts(parts)) => parts.iter().rev().find_map(|p| match p {
            ContentPart::Text { cache_control, .. } => cache_control.as_ref(),
            _ => None,
        }),
        _ => None,
    }
}

/// The canonical request in Anthropic's shape. Rules (docs/translation.md):
/// system and developer messages become `system` (joined, in order; as blocks
/// when one carries a caching breakpoint); `cache_control` goes on its block; tool
/// messages become `tool_result` blocks in a user turn; consecutive turns of one
/// role merge; `max_tokens` defaults to the provider's `default_max_tokens`;
/// `reasoning_effort` or an exact budget becomes `thinking`; `seed`,
/// `presence_penalty`, `frequency_penalty` and the hints in
/// [`translate::DROPPED_HINTS`] are dropped; `response_format` json, `n` > 1,
/// `logprobs`, audio and file parts, and `temperature` above 1 are refused.
pub fn to_wire(
    req: &ChatRequest,
    model: &str,
    stream: bool,
    default_max_tokens: u32,
) -> Result<MessagesRequest, ProviderError> {
    translate::check_common(req, DIALECT)?;
    if let Some(rf) = &req.response_format
        && rf["type"] != "text"
    {
        return Err(unsupported(DIALECT, "'response_format' (JSON mode)"));
    }
    let mut system: Vec<String> = Vec::new();
    // The system prompt as blocks, sent as such when one carries a caching breakpoint.
    let mut system_blocks: Vec<Block> = Vec::new();
    let mut messages: Vec<InputMessage> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        match m.role {
            Role::System | Role::Developer => {
                let text = translate::plain_text(m, DIALECT, &at)?;
                match &m.content {
                    Some(Content::Parts(parts)) => {
                        system_blocks.extend(parts.iter().map(|p| match p {
                            ContentPart::Text {
                                text,
                                cache_control,
                            } => text_block(text, cache_control.as_ref()),
                            ContentPart::Refusal { refusal } => Block::text(refusal.as_str()),
                            // (plain_text refused every other part.)
                            _ => Block::text(""),
                        }));
                    }
                    _ => system_blocks.push(Block::text(text.as_str())),
                }
                system.push(text);
            }
            Role::User => match &m.content {
                Some(Content::Text(s)) => {
                    push_block(&mut messages, WireRole::User, Block::text(s.as_str()))
                }
                Some(Content::Parts(parts)) => {
                    for p in parts {
                        let block = match p {
                            ContentPart::Text {
                                text,
                                cache_control,
                            } => text_block(text, cache_control.as_ref()),
                            ContentPart::ImageUrl { image_url } => image_block(&image_url.url),
                            ContentPart::File { .. } | ContentPart::InputAudio { .. } => {
                                return Err(unsupported(
                                    DIALECT,
                                    &format!("an audio or file part in {at}"),
                                ));
                            }
                            ContentPart::Refusal { refusal } => Block::text(refusal.as_str()),
                        };
                        push_block(&mut messages, WireRole::User, block);
                    }
                }
                None => {}
            },
            Role::Assistant => {
                let text = translate::plain_text(m, DIALECT, &at)?;
                if !text.is_empty() {
                    push_block(
                        &mut messages,
                        WireRole::Assistant,
                        text_block(&text, last_mark(m)),
                    );
                }
                for call in m.tool_calls.iter().flatten() {
                    let input = translate::arguments_object(&call.function.arguments, DIALECT)?;
                    push_block(
                        &mut messages,
                        WireRole::Assistant,
                        Block::ToolUse {
                            id: call.id.clone(),
                            name: call.function.name.clone(),
                            input,
                        },
                    );
                }
            }
            Role::Tool | Role::Function => {
                let text = translate::plain_text(m, DIALECT, &at)?;
                push_block(
                    &mut messages,
                    WireRole::User,
                    Block::ToolResult {
                        tool_use_id: m.tool_call_id.clone().unwrap_or_default(),
                        content: text,
                        is_error: None,
                        cache_control: last_mark(m).cloned(),
                    },
                );
            }
        }
    }
    let mut max_tokens = translate::max_tokens(req).unwrap_or(default_max_tokens);
    let mut thinking = None;
    if let Some(budget) = translate::thinking_budget(req) {
        if translate::max_tokens(req).is_none() && max_tokens <= budget {
            max_tokens = budget + default_max_tokens;
        }
        if max_tokens <= budget {
            return Err(ProviderError::Unsupported(format!(
                "max_tokens ({max_tokens}) must be larger than the thinking budget ({budget}) for Anthropic models"
            )));
        }
        thinking = Some(Thinking::Enabled {
            budget_tokens: budget,
        });
    }
    let marked = system_blocks.iter().any(|b| {
        matches!(
            b,
            Block::Text {
                cache_control: Some(_),
                ..
            }
        )
    });
    let system = if marked {
        Some(System::Blocks(system_blocks))
    } else {
        (!system.is_empty()).then(|| System::Text(system.join("\n\n")))
    };
    if req.temperature.is_some_and(|t| t > 1.0) {
        return Err(unsupported(DIALECT, "'temperature' above 1"));
    }
    let tools = req.tools.as_ref().map(|tools| {
        tools
            .iter()
            .map(|t| Tool {
                kind: None,
                name: t.function.name.clone(),
                description: t.function.description.clone(),
                input_schema: t
                    .function
                    .parameters
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                cache_control: t.cache_control.clone(),
            })
            .collect()
    });
    let no_parallel = req.extra.get("parallel_tool_calls") == Some(&Value::Bool(false));
    let choice = |kind| ToolChoice {
        kind,
        name: None,
        disable_parallel_tool_use: no_parallel && kind != ToolChoiceKind::None,
    };
    let tool_choice = match &req.tool_choice {
        None => no_parallel.then(|| choice(ToolChoiceKind::Auto)),
        Some(Value::String(s)) if s == "auto" => Some(choice(ToolChoiceKind::Auto)),
        Some(Value::String(s)) if s == "required" => Some(choice(ToolChoiceKind::Any)),
        Some(Value::String(s)) if s == "none" => Some(choice(ToolChoiceKind::None)),
        Some(v) => match v["function"]["name"].as_str() {
            Some(name) => Some(ToolChoice {
                name: Some(name.to_owned()),
                ..choice(ToolChoiceKind::Tool)
            }),
            None => return Err(unsupported(DIALECT, "this 'tool_choice'")),
        },
    };
    Ok(MessagesRequest {
        model: model.to_owned(),
        thinking,
        max_tokens,
        messages,
        system,
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        stop_sequences: translate::stops(req),
        metadata: req.user.as_ref().map(|u| Metadata {
            user_id: Some(u.clone()),
        }),
        tools,
        tool_choice,
        stream: stream.then_some(true),
        service_tier: None,
    })
}

/// Anthropic's stop reason as a canonical finish reason.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// A non-streamed message as one chunk with the whole answer.
pub fn from_message(body: &[u8]) -> Result<Chunk, ProviderError> {
    let m: wire::Message = call::json(body)?;
    let mut text: Option<String> = None;
    let mut thinking: Option<String> = None;
    let mut calls = Vec::new();
    for block in m.content {
        match block {
            Block::Text { text: t, .. } => text.get_or_insert_with(String::new).push_str(&t),
            Block::Thinking { thinking: t, .. } => {
                thinking.get_or_insert_with(String::new).push_str(&t)
            }
            Block::ToolUse { id, name, input } => calls.push(ToolCallDelta {
                index: calls.len() as u32,
                id: Some(id),
                kind: Some("function".into()),
                function: Some(FunctionCallDelta {
                    name: Some(name),
                    arguments: Some(input.to_string()),
                }),
            }),
            _ => {}
        }
    }
    let mut extra = Map::new();
    if let Some(t) = thinking {
        extra.insert("reasoning_content".into(), Value::String(t));
    }
    Ok(Chunk {
        meta: Some(ResponseMeta {
            response_id: m.id,
            served_model: m.model,
            ..ResponseMeta::default()
        }),
        choices: vec![ChoiceDelta {
            index: 0,
            delta: Delta {
                role: Some(Role::Assistant),
                content: text,
                refusal: None,
                tool_calls: (!calls.is_empty()).then_some(calls),
                extra,
            },
            finish_reason: Some(
                finish_reason(m.stop_reason.as_deref().unwrap_or("end_turn")).into(),
            ),
            logprobs: None,
        }],
        usage: Some(m.usage.tokens()),
    })
}

/// What a stream's block at some index is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Open {
    Text,
    Thinking,
    Tool(u32),
    Other,
}

/// Reads Anthropic's stream events.
#[derive(Debug, Default)]
pub struct AnthropicDecoder {
    blocks: Vec<(u64, Open)>,
    tools: u32,
    usage: Usage,
    finished: bool,
}

fn one(delta: Delta, finish_reason: Option<String>) -> Vec<ChoiceDelta> {
    vec![ChoiceDelta {
        index: 0,
        delta,
        finish_reason,
        logprobs: None,
    }]
}

fn chunk(choices: Vec<ChoiceDelta>, usage: Option<TokenUsage>) -> Step {
    Step::Chunk(Chunk {
        meta: None,
        choices,
        usage,
    })
}

/// An event's data; one without a `type` takes the SSE event's name.
fn read_event(event: &SseEvent) -> Result<StreamEvent, ProviderError> {
    match serde_json::from_str::<StreamEvent>(&event.data) {
        Ok(e) => Ok(e),
        Err(first) => {
            let mut v: Value = call::json(event.data.as_bytes())?;
            match (v.as_object_mut(), event.event.as_deref()) {
                (Some(o), Some(name)) if !o.contains_key("type") => {
                    o.insert("type".into(), Value::String(name.to_owned()));
                    serde_json::from_value(v)
                        .map_err(|e| ProviderError::Protocol(format!("{DIALECT} event: {e}")))
                }
                _ => Err(ProviderError::Protocol(format!("{DIALECT} event: {first}"))),
            }
        }
    }
}

impl Decoder for AnthropicDecoder {
    fn event(&mut self, event: SseEvent) -> Result<Step, ProviderError> {
        match read_event(&event)? {
            StreamEvent::MessageStart { message } => {
                self.usage.merge(message.usage);
                Ok(Step::Chunk(Chunk {
                    meta: Some(ResponseMeta {
                        response_id: message.id,
                        served_model: message.model,
                        ..ResponseMeta::default()
                    }),
                    choices: one(
                        Delta {
                            role: Some(Role::Assistant),
                            content: Some(String::new()),
                            ..Delta::default()
                        },
                        None,
                    ),
                    usage: None,
                }))
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                let open = match &content_block {
                    Block::Text { .. } => Open::Text,
                    Block::Thinking { .. } => Open::Thinking,
                    Block::ToolUse { .. } => {
                        self.tools += 1;
                        Open::Tool(self.tools - 1)
                    }
                    _ => Open::Other,
                };
                self.blocks.push((index, open));
                match (open, content_block) {
                    (Open::Tool(i), Block::ToolUse { id, name, .. }) => Ok(chunk(
                        one(
                            Delta {
                                tool_calls: Some(vec![ToolCallDelta {
                                    index: i,
                                    id: Some(id),
                                    kind: Some("function".into()),
                                    function: Some(FunctionCallDelta {
                                        name: Some(name),
                                        arguments: Some(String::new()),
                                    }),
                                }]),
                                ..Delta::default()
                            },
                            None,
                        ),
                        None,
                    )),
                    (_, Block::Text { text, .. }) if !text.is_empty() => Ok(chunk(
                        one(
                            Delta {
                                content: Some(text),
                                ..Delta::default()
                            },
                            None,
                        ),
                        None,
                    )),
                    _ => Ok(Step::Skip),
                }
            }
            StreamEvent::ContentBlockDelta { index, delta } => {
                let open = self
                    .blocks
                    .iter()
                    .rev()
                    .find(|(i, _)| *i == index)
                    .map_or(Open::Other, |(_, b)| *b);
                let delta = match (delta, open) {
                    (BlockDelta::TextDelta { text }, _) => Delta {
                        content: Some(text),
                        ..Delta::default()
                    },
                    (BlockDelta::ThinkingDelta { thinking }, _) => {
                        let mut extra = Map::new();
                        extra.insert("reasoning_content".into(), Value::String(thinking));
                        Delta {
                            extra,
                            ..Delta::default()
                        }
                    }
                    (BlockDelta::InputJsonDelta { partial_json }, Open::Tool(i)) => Delta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index: i,
                            function: Some(FunctionCallDelta {
                                name: None,
                                arguments: Some(partial_json),
                            }),
                            ..ToolCallDelta::default()
                        }]),
                        ..Delta::default()
                    },
                    _ => return Ok(Step::Skip),
                };
                Ok(chunk(one(delta, None), None))
            }
            StreamEvent::MessageDelta { delta, usage } => {
                self.usage.merge(usage);
                let reason = delta.stop_reason.as_deref().map(finish_reason);
                if reason.is_some() {
                    self.finished = true;
                }
                Ok(chunk(
                    one(Delta::default(), reason.map(str::to_owned)),
                    Some(self.usage.tokens()),
                ))
            }
            StreamEvent::MessageStop => Ok(Step::Done),
            StreamEvent::Error { error } => {
                let raw = event.data.as_bytes();
                // Mid-stream errors carry no status; Anthropic's type says what it was.
                let status = match error.kind.as_str() {
                    "overloaded_error" => 529,
                    "rate_limit_error" => 429,
                    "invalid_request_error" => 400,
                    _ => 502,
                };
                Err(crate::error::classify(status, read_error(raw), raw, None))
            }
            StreamEvent::ContentBlockStop { .. } | StreamEvent::Ping | StreamEvent::Other => {
                Ok(Step::Skip)
            }
        }
    }

    fn complete(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests;
