//! The Anthropic adapter's tests: requests built, messages and streams read.

use super::*;

fn wire_json(r: &ChatRequest, model: &str, stream: bool, max: u32) -> Value {
    serde_json::to_value(to_wire(r, model, stream, max).unwrap()).unwrap()
}

fn req(v: Value) -> ChatRequest {
    serde_json::from_value(v).unwrap()
}

#[test]
fn cache_breakpoints_are_sent_on_their_blocks() {
    let mark = json!({"type": "ephemeral"});
    let r = req(json!({
        "model": "route",
        "messages": [
            {"role": "system", "content": [
                {"type": "text", "text": "Rules."},
                {"type": "text", "text": "A long document.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
            ]},
            {"role": "system", "content": "More rules."},
            {"role": "user", "content": [{"type": "text", "text": "Read it.", "cache_control": mark}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Done.", "cache_control": mark}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": [{"type": "text", "text": "a cat", "cache_control": mark}]}
        ],
        "tools": [{"type": "function", "function": {"name": "look"}, "cache_control": mark}]
    }));
    let w = wire_json(&r, "claude-x", false, 1024);
    assert_eq!(
        w["system"],
        json!([
            {"type": "text", "text": "Rules."},
            {"type": "text", "text": "A long document.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
            {"type": "text", "text": "More rules."}
        ])
    );
    assert_eq!(
        w["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Read it.", "cache_control": mark}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Done.", "cache_control": mark}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a cat", "cache_control": mark}
            ]}
        ])
    );
    assert_eq!(w["tools"][0]["cache_control"], mark);
}

#[test]
fn request_maps_system_tools_images_and_tool_results() {
    let r = req(json!({
        "model": "route",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":\"cat\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "a cat"},
            {"role": "user", "content": "thanks"}
        ],
        "tools": [{"type": "function", "function": {"name": "look", "description": "Looks.", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
        "tool_choice": {"type": "function", "function": {"name": "look"}},
        "parallel_tool_calls": false,
        "stop": "END",
        "temperature": 0.5,
        "max_tokens": 100,
        "seed": 7,
        "user": "u-1"
    }));
    let w = wire_json(&r, "claude-x", true, 4096);
    assert_eq!(
        w,
        json!({
            "model": "claude-x",
            "max_tokens": 100,
            "system": "Be brief.\n\nUse tools.",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"q": "cat"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a cat"},
                    {"type": "text", "text": "thanks"}
                ]}
            ],
            "temperature": 0.5,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u-1"},
            "tools": [{"name": "look", "description": "Looks.", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}],
            "tool_choice": {"type": "tool", "name": "look", "disable_parallel_tool_use": true},
            "stream": true
        })
    );
}

#[test]
fn max_tokens_defaults_and_thinking_comes_from_effort() {
    let r = req(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
    assert_eq!(wire_json(&r, "c", false, 1234)["max_tokens"], 1234);
    let r = req(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "medium"}),
    );
    let w = wire_json(&r, "c", false, 1000);
    assert_eq!(
        w["thinking"],
        json!({"type": "enabled", "budget_tokens": 4096})
    );
    assert_eq!(w["max_tokens"], 5096);
    let r = req(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "high", "max_tokens": 100}),
    );
    assert!(matches!(
        to_wire(&r, "c", false, 1000),
        Err(ProviderError::Unsupported(_))
    ));
}

#[test]
fn fields_anthropic_cannot_honour_are_refused() {
    for extra in [
        json!({"response_format": {"type": "json_object"}}),
        json!({"n": 2}),
        json!({"temperature": 1.5}),
        json!({"logprobs": true}),
    ] {
        let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        let e = to_wire(&req(v), "c", false, 10).unwrap_err();
        assert!(matches!(e, ProviderError::Unsupported(_)), "{extra}: {e}");
        assert_eq!(e.code(), sy_protocol::ErrorCode::InvalidRequest);
    }
}

#[test]
fn message_maps_text_tool_use_and_cache_usage() {
    let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x-2025","content":[{"type":"thinking","thinking":"hmm","signature":"s"},{"type":"text","text":"Let me look."},{"type":"tool_use","id":"toolu_9","name":"look","input":{"q":"cat"}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":7,"cache_read_input_tokens":100,"cache_creation_input_tokens":20}}"#;
    let c = from_message(body).unwrap();
    assert_eq!(
        c.meta.unwrap().served_model.as_deref(),
        Some("claude-x-2025")
    );
    let ch = &c.choices[0];
    assert_eq!(ch.delta.content.as_deref(), Some("Let me look."));
    assert_eq!(ch.delta.extra["reasoning_content"], "hmm");
    assert_eq!(ch.finish_reason.as_deref(), Some("tool_calls"));
    let call = &ch.delta.tool_calls.as_ref().unwrap()[0];
    assert_eq!(call.id.as_deref(), Some("toolu_9"));
    assert_eq!(
        call.function.as_ref().unwrap().arguments.as_deref(),
        Some("{\"q\":\"cat\"}")
    );
    let u = c.usage.unwrap();
    assert_eq!(u.prompt_tokens(), 130, "input + cache reads + cache writes");
    assert_eq!(u.cached_input_tokens, 100);
    assert_eq!(u.cache_write_tokens, 20);
    assert_eq!(u.output_tokens, 7);
}

/// A tool-use stream as Anthropic documents it, fed in arbitrary splits.
const TOOL_STREAM: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":50,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n",
    "event: ping\ndata: {\"type\":\"ping\"}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Looking \u{1f50e}\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"look\",\"input\":{}}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"q\\\":\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"cat\\\"}\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":12}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

fn decode(bytes: &[u8], cut: usize) -> (Vec<Chunk>, bool) {
    let (out, done, complete) = call::decode_split(AnthropicDecoder::default(), bytes, cut);
    (out, done && complete)
}

#[test]
fn tool_stream_decodes_the_same_at_every_split() {
    let bytes = TOOL_STREAM.as_bytes();
    let (whole, complete) = decode(bytes, 0);
    assert!(complete);
    assert_eq!(
        whole[0].meta.as_ref().unwrap().response_id.as_deref(),
        Some("msg_2")
    );
    let text: String = whole
        .iter()
        .filter_map(|c| c.choices[0].delta.content.clone())
        .collect();
    assert_eq!(text, "Looking \u{1f50e}");
    let args: String = whole
        .iter()
        .flat_map(|c| c.choices[0].delta.tool_calls.clone().unwrap_or_default())
        .filter_map(|t| t.function.and_then(|f| f.arguments))
        .collect();
    assert_eq!(args, "{\"q\":\"cat\"}");
    let last = whole.last().unwrap();
    assert_eq!(last.choices[0].finish_reason.as_deref(), Some("tool_calls"));
    let u = last.usage.as_ref().unwrap();
    assert_eq!((u.prompt_tokens(), u.output_tokens), (55, 12));
    for cut in 1..bytes.len() {
        assert_eq!(decode(bytes, cut).0, whole, "split at {cut}");
    }
}

#[test]
fn stream_error_event_is_classified() {
    let mut d = AnthropicDecoder::default();
    let e = d
        .event(SseEvent {
            event: Some("error".into()),
            data: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
                .into(),
        })
        .unwrap_err();
    assert_eq!(e.code(), sy_protocol::ErrorCode::Overloaded);
}
