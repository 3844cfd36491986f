//! Google Gemini: `POST {base}/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`, `x-goog-api-key`, `contents`/`parts`,
//! `systemInstruction`, `functionDeclarations` and `functionCall` parts, safety
//! blocks as the `content_filter` finish reason, `usageMetadata`.
//! Wire format: <https://ai.google.dev/api/generate-content>.
//!
//! Gemini's `promptTokenCount` includes cached tokens (as OpenAI's does);
//! `thoughtsTokenCount` is added to the output tokens and reported as reasoning.

use std::collections::HashMap;

use futures::StreamExt;
use http::HeaderMap;
use serde_json::{Map, Value, json};
use sy_config::{ProviderConfig, ProviderKind};
use sy_protocol::TokenUsage;
use sy_protocol::chat::{
    ChatRequest, ChoiceDelta, Content, ContentPart, Delta, FunctionCallDelta, Role, ToolCallDelta,
};

use crate::call::{self, Decoder, Step};
use crate::error::ErrorBody;
use crate::sse::SseEvent;
use crate::translate::{self, unsupported};
use crate::{
    CallContext, Chunk, ChunkStream, Embeddings, GeneratedImage, Images, Provider, ProviderError,
    Reranked, ResponseMeta,
};
use sy_protocol::embeddings::EmbeddingsRequest;
use sy_protocol::images::ImagesRequest;
use sy_protocol::rerank::RerankRequest;

const DIALECT: &str = "Gemini";

/// A Gemini provider.
#[derive(Debug, Clone)]
pub struct GeminiAdapter {
    client: reqwest::Client,
    base: String,
    headers: HeaderMap,
}

/// Gemini's API key header.
const AUTH: call::Auth = call::Auth::Header("x-goog-api-key");

impl GeminiAdapter {
    /// Builds the adapter for a provider entry.
    pub fn from_config(config: &ProviderConfig) -> Result<Self, ProviderError> {
        let credential = call::entry_credential(config, AUTH);
        Ok(GeminiAdapter {
            client: call::client(config)?,
            base: config.base_url.as_str().trim_end_matches('/').to_owned(),
            headers: call::headers(config, credential)?,
        })
    }
}

impl Provider for GeminiAdapter {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Gemini
    }

    async fn chat(
        &self,
        req: &ChatRequest,
        cx: &CallContext,
    ) -> Result<ChunkStream, ProviderError> {
        let wire = to_wire(req)?;
        let body = serde_json::to_vec(&wire).map_err(|e| ProviderError::Protocol(e.to_string()))?;
        let url = if cx.stream {
            format!(
                "{}/models/{}:streamGenerateContent?alt=sse",
                self.base, cx.upstream_model
            )
        } else {
            format!("{}/models/{}:generateContent", self.base, cx.upstream_model)
        };
        let resp = call::post_json(
            &self.client,
            &url,
            call::call_headers(&self.headers, AUTH, cx)?.as_ref(),
            body,
            read_error,
        )
        .await?;
        if cx.stream {
            Ok(call::sse_stream(resp, GeminiDecoder::default()))
        } else {
            let raw = call::body(resp).await?;
            let mut d = GeminiDecoder::default();
            let chunk = d.response(call::json(&raw)?)?;
            Ok(futures::stream::once(async move { Ok(chunk) }).boxed())
        }
    }

    /// `batchEmbedContents`: one request per input text. Gemini reports no usage;
    /// the worker estimates it.
    async fn embed(
        &self,
        req: &EmbeddingsRequest,
        cx: &CallContext,
    ) -> Result<Embeddings, ProviderError> {
        let texts = req
            .input
            .texts()
            .ok_or_else(|| unsupported(DIALECT, "token-array 'input'"))?;
        let requests: Vec<Value> = texts
            .iter()
            .map(|t| {
                let mut r = json!({"model": format!("models/{}", cx.upstream_model), "content": {"parts": [{"text": t}]}});
                if let Some(d) = req.dimensions {
                    r["outputDimensionality"] = json!(d);
                }
                r
            })
            .collect();
        let body = serde_json::to_vec(&json!({"requests": requests}))
            .map_err(|e| ProviderError::Protocol(e.to_string()))?;
        let url = format!(
            "{}/models/{}:batchEmbedContents",
            self.base, cx.upstream_model
        );
        let resp = call::post_json(
            &self.client,
            &url,
            call::call_headers(&self.headers, AUTH, cx)?.as_ref(),
            body,
            read_error,
        )
        .await?;
        let v: Value = call::json(&call::body(resp).await?)?;
        let vectors = v["embeddings"]
            .as_array()
            .ok_or_else(|| ProviderError::Protocol("no embeddings in Gemini's answer".into()))?
            .iter()
            .map(|e| serde_json::from_value::<Vec<f32>>(e["values"].clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ProviderError::Protocol(e.to_string()))?;
        Ok(Embeddings {
            vectors,
            usage: None,
            model: None,
        })
    }

    async fn rerank(
        &self,
        _req: &RerankRequest,
        _cx: &CallContext,
    ) -> Result<Reranked, ProviderError> {
        Err(ProviderError::Unsupported(
            "Gemini has no rerank API; route this model to a Cohere or OpenAI-compatible rerank model".into(),
        ))
    }

    /// `generateContent` with `responseModalities: ["IMAGE"]` (Gemini's
    /// image models): one image per call, so `n` > 1 is refused; `size`,
    /// `quality` and OpenAI's other image fields have no Gemini spelling
    /// and are dropped.
    async fn images(&self, req: &ImagesRequest, cx: &CallContext) -> Result<Images, ProviderError> {
        if req.count() > 1 {
            return Err(unsupported(DIALECT, "'n' above 1"));
        }
        let wire = json!({
            "contents": [{"role": "user", "parts": [{"text": req.prompt}]}],
            "generationConfig": {"responseModalities": ["IMAGE"]},
        });
        let body = serde_json::to_vec(&wire).map_err(|e| ProviderError::Protocol(e.to_string()))?;
        let url = format!("{}/models/{}:generateContent", self.base, cx.upstream_model);
        let resp = call::post_json(
            &self.client,
            &url,
            call::call_headers(&self.headers, AUTH, cx)?.as_ref(),
            body,
            read_error,
        )
        .await?;
        from_images(&call::body(resp).await?)
    }
}

/// Gemini's image answer: each `inlineData` part of the first candidate
/// is an image; usage from `usageMetadata`.
pub fn from_images(raw: &[u8]) -> Result<Images, ProviderError> {
    let v: Value = call::json(raw)?;
    let parts = v["candidates"][0]["content"]["parts"]
        .as_array()
        .ok_or_else(|| ProviderError::Protocol("no candidate in Gemini's image answer".into()))?;
    let images: Vec<GeneratedImage> = parts
        .iter()
        .filter_map(|p| {
            let data = p.get("inlineData").or_else(|| p.get("inline_data"))?;
            Some(GeneratedImage {
                b64: data["data"].as_str().map(str::to_owned),
                content_type: data
                    .get("mimeType")
                    .or_else(|| data.get("mime_type"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                ..GeneratedImage::default()
            })
        })
        .collect();
    if images.is_empty() {
        let why = v["candidates"][0]["finishReason"]
            .as_str()
            .unwrap_or("none");
        return Err(ProviderError::Protocol(format!(
            "Gemini's answer holds no image (finish reason {why})"
        )));
    }
    let meta = &v["usageMetadata"];
    let usage = meta["promptTokenCount"].as_u64().map(|prompt| TokenUsage {
        input_tokens: prompt,
        output_tokens: meta["candidatesTokenCount"].as_u64().unwrap_or(0),
        ..TokenUsage::default()
    });
    Ok(Images {
        images,
        usage,
        model: v["modelVersion"].as_str().map(str::to_owned),
    })
}

/// Gemini's error body: `{"error":{"code","message","status"}}`.
pub fn read_error(raw: &[u8]) -> ErrorBody {
    call::read_error_fields(raw, &[&["error", "message"]], &[&["error", "status"]])
}

fn image_part(url: &str) -> Value {
    match translate::data_url(url) {
        Some((mime, data)) => json!({"inlineData": {"mimeType": mime, "data": data}}),
        None => {
            let lower = url.to_ascii_lowercase();
            let path = lower.split(['?', '#']).next().unwrap_or("");
            let mime = match path.rsplit('.').next() {
                Some("png") => "image/png",
                Some("gif") => "image/gif",
                Some("webp") => "image/webp",
                Some("heic") => "image/heic",
                _ => "image/jpeg",
            };
            json!({"fileData": {"mimeType": mime, "fileUri": url}})
        }
    }
}

fn push_part(contents: &mut Vec<Value>, role: &str, part: Value) {
    if let Some(last) = contents.last_mut()
        && last["role"] == role
        && let Some(parts) = last["parts"].as_array_mut()
    {
        parts.push(part);
        return;
    }
    contents.push(json!({"role": role, "parts": [part]}));
}

/// JSON Schema keywords Gemini's function declarations reject; removed recursively.
const SCHEMA_DROPPED: &[&str] = &["additionalProperties", "$schema", "strict", "$id"];

fn clean_schema(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !SCHEMA_DROPPED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), clean_schema(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(clean_schema).collect()),
        other => other.clone(),
    }
}

/// The canonical request in Gemini's shape. Rules (docs/translation.md): system
/// and developer messages become `systemInstruction`; assistant turns are role
/// `model`; a tool message becomes a `functionResponse` part named after the call
/// it answers (its content as `{"content": text}` unless it is a JSON object);
/// `response_format` becomes `responseMimeType` (+ `responseJsonSchema`);
/// `reasoning_effort` or a budget becomes `thinkingConfig.thinkingBudget`;
/// schema keywords Gemini rejects (`additionalProperties`, `$schema`) are removed
/// from tool parameters; the hints in [`translate::DROPPED_HINTS`] are dropped;
/// `n` > 1, `logprobs`, audio and file parts are refused.
pub fn to_wire(req: &ChatRequest) -> Result<Value, ProviderError> {
    translate::check_common(req, DIALECT)?;
    let mut system: Vec<String> = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for (i, m) in req.messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        match m.role {
            Role::System | Role::Developer => system.push(translate::plain_text(m, DIALECT, &at)?),
            Role::User => match &m.content {
                Some(Content::Text(s)) => push_part(&mut contents, "user", json!({"text": s})),
                Some(Content::Parts(parts)) => {
                    for p in parts {
                        let part = match p {
                            ContentPart::Text { text, .. } => json!({"text": text}),
                            ContentPart::ImageUrl { image_url } => image_part(&image_url.url),
                            ContentPart::Refusal { refusal } => json!({"text": refusal}),
                            ContentPart::File { .. } | ContentPart::InputAudio { .. } => {
                                return Err(unsupported(
                                    DIALECT,
                                    &format!("an audio or file part in {at}"),
                                ));
                            }
                        };
                        push_part(&mut contents, "user", part);
                    }
                }
                None => {}
            },
            Role::Assistant => {
                let text = translate::plain_text(m, DIALECT, &at)?;
                if !text.is_empty() {
                    push_part(&mut contents, "model", json!({"text": text}));
                }
                for call in m.tool_calls.iter().flatten() {
                    call_names.insert(&call.id, &call.function.name);
                    let args = translate::arguments_object(&call.function.arguments, DIALECT)?;
                    push_part(
                        &mut contents,
                        "model",
                        json!({"functionCall": {"id": call.id, "name": call.function.name, "args": args}}),
                    );
                }
            }
            Role::Tool | Role::Function => {
                let text = translate::plain_text(m, DIALECT, &at)?;
                let id = m.tool_call_id.as_deref().unwrap_or("");
                let Some(name) = call_names.get(id).copied().or(m.name.as_deref()) else {
                    return Err(ProviderError::Unsupported(format!(
                        "{at}: tool_call_id '{id}' answers no earlier tool call; Gemini needs the function's name"
                    )));
                };
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"content": text}),
                };
                push_part(
                    &mut contents,
                    "user",
                    json!({"functionResponse": {"id": id, "name": name, "response": response}}),
                );
            }
        }
    }
    let mut wire = Map::new();
    wire.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        wire.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system.join("\n\n")}]}),
        );
    }
    let mut config = Map::new();
    let mut put = |k: &str, v: Value| {
        config.insert(k.into(), v);
    };
    if let Some(t) = req.temperature {
        put("temperature", json!(t));
    }
    if let Some(p) = req.top_p {
        put("topP", json!(p));
    }
    if let Some(k) = req.top_k {
        put("topK", json!(k));
    }
    if let Some(m) = translate::max_tokens(req) {
        put("maxOutputTokens", json!(m));
    }
    if let Some(s) = translate::stops(req) {
        put("stopSequences", json!(s));
    }
    if let Some(s) = req.seed {
        put("seed", json!(s));
    }
    for (from, to) in [
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(v) = req.extra.get(from).filter(|v| v.is_number()) {
            put(to, v.clone());
        }
    }
    match req
        .response_format
        .as_ref()
        .and_then(|r| r["type"].as_str())
    {
        None | Some("text") => {}
        Some("json_object") => put("responseMimeType", json!("application/json")),
        Some("json_schema") => {
            put("responseMimeType", json!("application/json"));
            let rf = req
                .response_format
                .as_ref()
                .map(|r| &r["json_schema"]["schema"]);
            if let Some(schema) = rf.filter(|s| s.is_object()) {
                put("responseJsonSchema", schema.clone());
            }
        }
        Some(other) => {
            return Err(unsupported(
                DIALECT,
                &format!("response_format type '{other}'"),
            ));
        }
    }
    if let Some(budget) = translate::thinking_budget(req) {
        put("thinkingConfig", json!({"thinkingBudget": budget}));
    } else if req.reasoning_effort.as_deref() == Some("minimal") {
        put("thinkingConfig", json!({"thinkingBudget": 0}));
    }
    if !config.is_empty() {
        wire.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(tools) = &req.tools {
        let decls: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.function.name});
                if let Some(desc) = &t.function.description {
                    d["description"] = json!(desc);
                }
                if let Some(p) = &t.function.parameters {
                    d["parameters"] = clean_schema(p);
                }
                d
            })
            .collect();
        wire.insert("tools".into(), json!([{"functionDeclarations": decls}]));
    }
    let mode = match &req.tool_choice {
        None => None,
        Some(Value::String(s)) if s == "auto" => Some(json!({"mode": "AUTO"})),
        Some(Value::String(s)) if s == "required" => Some(json!({"mode": "ANY"})),
        Some(Value::String(s)) if s == "none" => Some(json!({"mode": "NONE"})),
        Some(v) => match v["function"]["name"].as_str() {
            Some(name) => Some(json!({"mode": "ANY", "allowedFunctionNames": [name]})),
            None => return Err(unsupported(DIALECT, "this 'tool_choice'")),
        },
    };
    if let Some(m) = mode {
        wire.insert("toolConfig".into(), json!({"functionCallingConfig": m}));
    }
    Ok(Value::Object(wire))
}

/// Gemini's finish reason as a canonical one.
pub fn finish_reason(reason: &str, called_tools: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if called_tools => "tool_calls",
        _ => "stop",
    }
}

/// Gemini's `promptTokenCount` includes `cachedContentTokenCount`; its
/// output is the candidates plus the thoughts.
fn usage(u: &Value) -> Option<TokenUsage> {
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    if !u.is_object() {
        return None;
    }
    let thoughts = n("thoughtsTokenCount");
    Some(TokenUsage::from_prompt_total(
        n("promptTokenCount"),
        n("cachedContentTokenCount"),
        0,
        n("candidatesTokenCount") + thoughts,
        thoughts,
    ))
}

/// Reads Gemini responses (a whole one, or each streamed one).
#[derive(Debug, Default)]
pub struct GeminiDecoder {
    started: bool,
    tools: u32,
    finished: bool,
}

impl GeminiDecoder {
    /// One `GenerateContentResponse` as a chunk.
    pub fn response(&mut self, v: Value) -> Result<Chunk, ProviderError> {
        let meta = (!self.started).then(|| ResponseMeta {
            response_id: v["responseId"].as_str().map(str::to_owned),
            served_model: v["modelVersion"].as_str().map(str::to_owned),
            created: None,
            system_fingerprint: None,
        });
        let mut delta = Delta {
            role: (!self.started).then_some(Role::Assistant),
            ..Delta::default()
        };
        self.started = true;
        let mut finish = None;
        let candidate = &v["candidates"][0];
        for part in candidate["content"]["parts"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(call) = part.get("functionCall") {
                let id = call["id"]
                    .as_str()
                    .map_or_else(|| format!("call_{}", self.tools), str::to_owned);
                delta
                    .tool_calls
                    .get_or_insert_with(Vec::new)
                    .push(ToolCallDelta {
                        index: self.tools,
                        id: Some(id),
                        kind: Some("function".into()),
                        function: Some(FunctionCallDelta {
                            name: call["name"].as_str().map(str::to_owned),
                            arguments: Some(call.get("args").unwrap_or(&json!({})).to_string()),
                        }),
                    });
                self.tools += 1;
            } else if let Some(t) = part["text"].as_str() {
                if part["thought"].as_bool() == Some(true) {
                    let r = delta
                        .extra
                        .entry("reasoning_content")
                        .or_insert_with(|| json!(""));
                    if let Value::String(s) = r {
                        s.push_str(t);
                    }
                } else {
                    delta.content.get_or_insert_with(String::new).push_str(t);
                }
            }
        }
        if let Some(r) = candidate["finishReason"].as_str() {
            finish = Some(finish_reason(r, self.tools > 0).to_owned());
        } else if let Some(block) = v["promptFeedback"]["blockReason"].as_str() {
            // The prompt itself was blocked: no candidates at all.
            delta.refusal = Some(format!("The prompt was blocked by Gemini ({block})."));
            finish = Some("content_filter".to_owned());
        }
        if finish.is_some() {
            self.finished = true;
        }
        Ok(Chunk {
            meta,
            choices: vec![ChoiceDelta {
                index: 0,
                delta,
                finish_reason: finish,
                logprobs: None,
            }],
            usage: usage(&v["usageMetadata"]),
        })
    }
}

impl Decoder for GeminiDecoder {
    fn event(&mut self, event: SseEvent) -> Result<Step, ProviderError> {
        let v: Value = call::json(event.data.as_bytes())?;
        if v.get("error").is_some() {
            let raw = v.to_string();
            let status = v["error"]["code"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(502);
            return Err(crate::error::classify(
                status,
                read_error(raw.as_bytes()),
                raw.as_bytes(),
                None,
            ));
        }
        self.response(v).map(Step::Chunk)
    }

    fn complete(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> ChatRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn request_maps_contents_system_tools_and_function_responses() {
        let r = req(json!({
            "model": "route",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/sky.webp?s=1"}}
                ]},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_a", "content": "rainy"}
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {
                "type": "object", "additionalProperties": false,
                "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
            "tool_choice": "required",
            "temperature": 0.2, "max_completion_tokens": 50, "stop": ["X"], "seed": 1,
            "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
            "reasoning_effort": "low"
        }));
        let w = to_wire(&r).unwrap();
        assert_eq!(
            w,
            json!({
                "contents": [
                    {"role": "user", "parts": [
                        {"text": "Weather?"},
                        {"inlineData": {"mimeType": "image/png", "data": "AAAA"}},
                        {"fileData": {"mimeType": "image/webp", "fileUri": "https://x.test/sky.webp?s=1"}}
                    ]},
                    {"role": "model", "parts": [{"functionCall": {"id": "call_a", "name": "weather", "args": {"city": "Oslo"}}}]},
                    {"role": "user", "parts": [{"functionResponse": {"id": "call_a", "name": "weather", "response": {"content": "rainy"}}}]}
                ],
                "systemInstruction": {"parts": [{"text": "Be brief."}]},
                "generationConfig": {
                    "temperature": 0.2, "maxOutputTokens": 50, "stopSequences": ["X"], "seed": 1,
                    "responseMimeType": "application/json", "responseJsonSchema": {"type": "object"},
                    "thinkingConfig": {"thinkingBudget": 1024}
                },
                "tools": [{"functionDeclarations": [{"name": "weather", "parameters": {
                    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]}],
                "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}
            })
        );
    }

    #[test]
    fn a_tool_result_for_an_unknown_call_is_refused() {
        let r = req(json!({"model": "m", "messages": [
            {"role": "user", "content": "x"},
            {"role": "tool", "tool_call_id": "nope", "content": "1"}
        ]}));
        assert!(matches!(to_wire(&r), Err(ProviderError::Unsupported(_))));
    }

    #[test]
    fn response_maps_text_calls_usage_and_safety() {
        let mut d = GeminiDecoder::default();
        let c = d
            .response(json!({
                "candidates": [{"content": {"role": "model", "parts": [
                    {"text": "plan", "thought": true},
                    {"text": "Calling."},
                    {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}
                ]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 5, "thoughtsTokenCount": 3, "cachedContentTokenCount": 8, "totalTokenCount": 28},
                "modelVersion": "gemini-2.5-flash-001", "responseId": "r1"
            }))
            .unwrap();
        let ch = &c.choices[0];
        assert_eq!(ch.delta.content.as_deref(), Some("Calling."));
        assert_eq!(ch.delta.extra["reasoning_content"], "plan");
        assert_eq!(ch.finish_reason.as_deref(), Some("tool_calls"));
        let call = &ch.delta.tool_calls.as_ref().unwrap()[0];
        assert_eq!(call.id.as_deref(), Some("call_0"));
        assert_eq!(
            call.function.as_ref().unwrap().arguments.as_deref(),
            Some("{\"city\":\"Oslo\"}")
        );
        let u = c.usage.unwrap();
        assert_eq!((u.prompt_tokens(), u.output_tokens), (20, 8));
        assert_eq!(u.cached_input_tokens, 8);
        assert_eq!(
            c.meta.unwrap().served_model.as_deref(),
            Some("gemini-2.5-flash-001")
        );

        let mut d = GeminiDecoder::default();
        let c = d
            .response(json!({"promptFeedback": {"blockReason": "SAFETY"}}))
            .unwrap();
        assert_eq!(
            c.choices[0].finish_reason.as_deref(),
            Some("content_filter")
        );
        let c = GeminiDecoder::default()
            .response(json!({"candidates": [{"content": {"parts": []}, "finishReason": "SAFETY"}]}))
            .unwrap();
        assert_eq!(
            c.choices[0].finish_reason.as_deref(),
            Some("content_filter")
        );
    }

    const STREAM: &str = concat!(
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"H\u{e9}llo\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 4,\"candidatesTokenCount\": 1,\"totalTokenCount\": 5},\"modelVersion\": \"gemini-2.5-flash\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" w\u{f6}rld\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 4,\"candidatesTokenCount\": 2,\"totalTokenCount\": 6},\"modelVersion\": \"gemini-2.5-flash\"}\r\n\r\n",
    );

    #[test]
    fn stream_decodes_the_same_at_every_split() {
        let bytes = STREAM.as_bytes();
        let run = |cut: usize| {
            let (out, _, complete) = call::decode_split(GeminiDecoder::default(), bytes, cut);
            assert!(complete);
            out
        };
        let whole = run(0);
        let text: String = whole
            .iter()
            .filter_map(|c| c.choices[0].delta.content.clone())
            .collect();
        assert_eq!(text, "H\u{e9}llo w\u{f6}rld");
        assert_eq!(whole[1].usage.as_ref().unwrap().output_tokens, 2);
        for cut in 1..bytes.len() {
            assert_eq!(run(cut), whole, "split at {cut}");
        }
    }
}
