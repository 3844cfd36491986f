//! Reading Messages requests: the canonical request they become, and the
//! errors that name their fields.

use super::*;

#[test]
fn cache_breakpoints_reach_the_canonical_request() {
    let mark = json!({"type": "ephemeral"});
    let body = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "system": [
            {"type": "text", "text": "Long instructions."},
            {"type": "text", "text": "A large document.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        ],
        "messages": [
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a cat", "cache_control": mark},
                {"type": "text", "text": "Go on."}
            ]}
        ],
        "tools": [{"name": "look", "input_schema": {"type": "object"}, "cache_control": mark}]
    });
    let req = parse(body.to_string().as_bytes()).unwrap();
    crate::validate_chat(&req).unwrap();
    let v = serde_json::to_value(&req).unwrap();
    assert_eq!(
        v["messages"],
        json!([
            {"role": "system", "content": [
                {"type": "text", "text": "Long instructions."},
                {"type": "text", "text": "A large document.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
            ]},
            {"role": "tool", "content": [{"type": "text", "text": "a cat", "cache_control": mark}], "tool_call_id": "toolu_1"},
            {"role": "user", "content": "Go on."}
        ])
    );
    assert_eq!(v["tools"][0]["cache_control"], mark);

    // Without breakpoints the system prompt stays one string.
    let plain = json!({"model": "m", "max_tokens": 8,
        "system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
        "messages": [{"role": "user", "content": "hi"}]});
    let v = serde_json::to_value(parse(plain.to_string().as_bytes()).unwrap()).unwrap();
    assert_eq!(
        v["messages"][0],
        json!({"role": "system", "content": "A\nB"})
    );
}

#[test]
fn bad_cache_breakpoints_are_refused_before_any_provider() {
    for (cc, param) in [
        (
            json!({"type": "persistent"}),
            "messages[0].content[0].cache_control",
        ),
        (
            json!({"type": "ephemeral", "ttl": "2d"}),
            "messages[0].content[0].cache_control",
        ),
        (json!("ephemeral"), "messages[0].content[0].cache_control"),
    ] {
        let body = json!({"model": "m", "max_tokens": 8, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": cc}]}]});
        let err = parse(body.to_string().as_bytes())
            .and_then(|r| crate::validate_chat(&r))
            .unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST, "{cc}");
        assert_eq!(err.param.as_deref(), Some(param), "{cc}");
    }
    let five: Vec<Value> = (0..5)
        .map(|i| json!({"type": "text", "text": format!("part {i}"), "cache_control": {"type": "ephemeral"}}))
        .collect();
    let body =
        json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": five}]});
    let err = parse(body.to_string().as_bytes())
        .and_then(|r| crate::validate_chat(&r))
        .unwrap_err();
    assert!(err.message.contains("maximum of 4"), "{}", err.message);
}

#[test]
fn request_translates_system_blocks_tools_and_results() {
    let body = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "x"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"q": 1}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "a cat"}]},
                {"type": "text", "text": "So?"}
            ]}
        ],
        "tools": [{"name": "look", "description": "Looks.", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "stop_sequences": ["END"],
        "temperature": 0.3,
        "top_k": 5,
        "metadata": {"user_id": "u1"},
        "thinking": {"type": "enabled", "budget_tokens": 3000},
        "stream": true
    });
    let req = parse(body.to_string().as_bytes()).unwrap();
    let v = serde_json::to_value(&req).unwrap();
    assert_eq!(
        v["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?", "cache_control": {"type": "ephemeral"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
            ]},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":1}"}}
            ]},
            {"role": "tool", "content": "a cat", "tool_call_id": "toolu_1"},
            {"role": "user", "content": "So?"}
        ])
    );
    assert_eq!(
        v["tools"][0]["function"]["parameters"],
        json!({"type": "object"})
    );
    assert_eq!(v["tool_choice"], "required");
    assert_eq!(v["parallel_tool_calls"], false);
    assert_eq!(v["stop"], json!(["END"]));
    assert_eq!(v["max_tokens"], 256);
    assert_eq!(v["user"], "u1");
    assert_eq!(req.top_k, Some(5));
    assert_eq!(req.thinking_budget, Some(3000));
    assert_eq!(req.reasoning_effort.as_deref(), Some("medium"));
    assert!(req.is_stream());
}

#[test]
fn bad_requests_name_the_field() {
    let e = |v: Value| parse(v.to_string().as_bytes()).unwrap_err();
    let msgs = json!([{"role": "user", "content": "x"}]);
    assert_eq!(
        e(json!({"model": "m", "messages": msgs})).param.as_deref(),
        Some("max_tokens")
    );
    assert_eq!(
        e(json!({"model": "m", "max_tokens": 5, "messages": msgs, "n": 2}))
            .param
            .as_deref(),
        Some("n")
    );
    assert_eq!(
        e(json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}))
            .param
            .as_deref(),
        Some("messages.0.role")
    );
    assert_eq!(
        e(
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {}}]}]})
        )
        .param
        .as_deref(),
        Some("messages.0.content.0.type")
    );
    assert_eq!(
        e(json!({"model": "m", "max_tokens": 5, "messages": msgs, "temperature": 1.5}))
            .param
            .as_deref(),
        Some("temperature")
    );
    assert_eq!(
        e(json!({"model": "m", "max_tokens": 5, "messages": msgs,
            "tools": [{"type": "web_search_20250305", "name": "web_search"}]}))
        .param
        .as_deref(),
        Some("tools.0.type")
    );
}

#[test]
fn type_errors_name_the_field_in_anthropics_words() {
    let e = |v: Value| parse(v.to_string().as_bytes()).unwrap_err();
    let case = |v: Value| {
        let e = e(v);
        (e.param.unwrap_or_default(), e.message)
    };
    let base = |extra: Value| {
        let mut v = json!({"model": "m", "max_tokens": 8,
            "messages": [{"role": "user", "content": "x"}]});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    assert_eq!(
        case(base(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "text", "text": 5}]}]}))),
        (
            "messages.0.content.1.text".into(),
            "messages.0.content.1.text: Input should be a valid string".into()
        )
    );
    assert_eq!(
        case(base(json!({"messages": [{"role": "user", "content": [
            {"type": "text"}]}]})))
        .0,
        "messages.0.content.0.text"
    );
    assert_eq!(
        case(base(json!({"messages": [{"role": "user", "content": 5}]}))),
        (
            "messages.0.content".into(),
            "messages.0.content: expected a string or a list of content blocks".into()
        )
    );
    assert_eq!(
        case(base(json!({"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [
                {"type": "text", "text": "ok"}, {"type": "image", "source": {"type": "url", "url": "u"}}]}]}]})))
        .0,
        "messages.0.content.0.content.1.type"
    );
    assert_eq!(
        case(base(json!({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}))),
        (
            "messages.0.content.0.source.type".into(),
            "messages.0.content.0.source.type: expected 'base64' or 'url'".into()
        )
    );
    assert_eq!(
        case(base(json!({"top_k": "many"}))),
        (
            "top_k".into(),
            "top_k: Input should be a valid integer greater than or equal to 0".into()
        )
    );
    assert_eq!(case(base(json!({"max_tokens": -1}))).0, "max_tokens");
    assert_eq!(case(base(json!({"max_tokens": 0}))).0, "max_tokens");
    assert_eq!(
        case(base(json!({"tool_choice": {"type": "sometimes"}}))),
        (
            "tool_choice.type".into(),
            "tool_choice.type: expected 'auto', 'any', 'tool' or 'none'".into()
        )
    );
    assert_eq!(
        case(base(json!({"metadata": {"user_id": 7}}))).0,
        "metadata.user_id"
    );
    assert_eq!(
        case(base(
            json!({"system": [{"type": "image", "source": {"type": "url", "url": "u"}}]})
        )),
        (
            "system.0.type".into(),
            "system.0: only text blocks are supported here, not \"image\"".into()
        )
    );
    // A tool result's text blocks are joined; its failure is marked.
    let r = parse(
        base(json!({"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "is_error": true,
             "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}]}))
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        serde_json::to_value(&r.messages[0].content).unwrap(),
        json!("Error: a\nb")
    );
}
