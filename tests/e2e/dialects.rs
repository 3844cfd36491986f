//! Client APIs against provider dialects through the whole stack: what each
//! client gets when a target cannot honour a field, and errors in the client's
//! own format.

use serde_json::{Value, json};

use crate::stack::{Stack, body};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_a_target_cannot_honour_are_refused_in_the_clients_format() {
    let stack = Stack::start().await;
    // OpenAI client, fields with no equivalent at the target.
    for (model, extra) in [
        (
            "claude-sonnet-4-5",
            json!({"response_format": {"type": "json_object"}}),
        ),
        ("claude-sonnet-4-5", json!({"temperature": 1.7})),
        ("gemini-2.5-flash", json!({"n": 2})),
        ("command-r-plus", json!({"logprobs": true})),
    ] {
        let mut b = body(model, "hi");
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        let resp = stack.chat(&b).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{model} {extra}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not supported"),
            "{v}"
        );
    }
    assert_eq!(stack.upstream_requests(), 0, "no provider was called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_clients_get_anthropic_errors() {
    let stack = Stack::start().await;
    let cases = [
        (
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}),
            400,
            "invalid_request_error",
        ),
        (
            json!({"model": "no-such", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
            404,
            "not_found_error",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
            400,
            "invalid_request_error",
        ),
        (
            json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "unknown": 1}),
            400,
            "invalid_request_error",
        ),
    ];
    for (b, status, kind) in cases {
        let resp = stack.messages(&b).send().await.unwrap();
        assert_eq!(resp.status(), status, "{b}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], kind, "{v}");
    }
    let resp = stack
        .http
        .post(stack.url("/v1/messages"))
        .header("x-api-key", "wrong-key-123")
        .json(&json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(stack.upstream_requests(), 0, "no provider was called");

    // Provider errors are translated: Gemini's RESOURCE_EXHAUSTED is Anthropic's 429,
    // Cohere's overload is Anthropic's 529; a mid-stream cut is an `error` event.
    for (model, directive, status, kind) in [
        ("gemini-2.5-flash", "status=429", 429, "rate_limit_error"),
        (
            "command-r-plus",
            "error=overloaded",
            529,
            "overloaded_error",
        ),
        (
            "gpt-4o-mini",
            "error=context_length",
            400,
            "invalid_request_error",
        ),
    ] {
        let b = json!({"model": model, "max_tokens": 5,
            "messages": [{"role": "user", "content": format!("x [[mock:{directive}]]")}]});
        let resp = stack.messages(&b).send().await.unwrap();
        assert_eq!(resp.status(), status, "{model} {directive}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], kind, "{v}");
    }
    let b = json!({"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": true,
        "messages": [{"role": "user", "content": "x [[mock:tokens=20,cut_after=3]]"}]});
    let resp = stack.messages(&b).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("event: message_start"), "{text}");
    assert!(text.contains("event: error"), "{text}");
    assert!(!text.contains("message_stop"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_tool_round_trip_reaches_gemini_with_the_functions_name() {
    let stack = Stack::start().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "additionalProperties": false,
            "properties": {"city": {"type": "string"}}}}}]);
    let mut b = body(
        "gemini-2.5-flash",
        "Weather in Oslo? [[mock:tool_call=get_weather]]",
    );
    b["tools"] = tools.clone();
    let v: Value = stack.chat(&b).send().await.unwrap().json().await.unwrap();
    let call = v["choices"][0]["message"]["tool_calls"][0].clone();
    assert_eq!(call["function"]["name"], "get_weather", "{v}");
    let follow = json!({"model": "gemini-2.5-flash", "tools": tools, "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "rain"}
    ]});
    let resp = stack.chat(&follow).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{v}"
    );
    // A tool result that answers no call cannot be named for Gemini: a clear 400.
    let orphan = json!({"model": "gemini-2.5-flash", "messages": [
        {"role": "user", "content": "x"},
        {"role": "tool", "tool_call_id": "nope", "content": "rain"}
    ]});
    let resp = stack.chat(&orphan).send().await.unwrap();
    assert_eq!(resp.status(), 400);
}
