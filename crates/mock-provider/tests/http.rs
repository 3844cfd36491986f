//! The mock over real HTTP: OpenAI shapes, directives, counters.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use sy_mock_provider::{DEFAULT_TOKENS, MockOptions, MockProvider, reply_text};

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn chat(prompt: &str) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": prompt}]})
}

async fn post(mock: &MockProvider, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The `data:` payloads received before the body ended (or broke).
async fn sse(resp: reqwest::Response) -> Vec<String> {
    let mut raw = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(Ok(chunk)) = body.next().await {
        raw.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(raw).unwrap();
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn non_streamed_answer_has_openai_shape() {
    let mock = MockProvider::start(MockOptions::new("openai"))
        .await
        .unwrap();
    let resp = post(&mock, &chat("hello there")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_some());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "m");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        reply_text("hello there", DEFAULT_TOKENS, 0)
    );
    assert_eq!(v["usage"]["completion_tokens"], DEFAULT_TOKENS);
    assert_eq!(v["usage"]["prompt_tokens"], 2 + 3);
    assert_eq!(mock.stats().completed, 1);
}

#[tokio::test]
async fn stream_concatenates_to_the_reply_and_ends_with_usage_and_done() {
    let mock = MockProvider::start(MockOptions::new("openai"))
        .await
        .unwrap();
    let mut body = chat("tell me [[mock:tokens=9]]");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let data = sse(post(&mock, &body).await).await;
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, reply_text("tell me", 9, 0));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 9);
    assert!(chunks[0]["usage"].is_null());
}

#[tokio::test]
async fn status_fault_with_retry_after_and_only_filter() {
    let mock = MockProvider::start(MockOptions::new("openai"))
        .await
        .unwrap();
    let resp = post(&mock, &chat("x [[mock:status=429,retry_after=4]]")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "4");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    let resp = post(&mock, &chat("x [[mock:status=500,only=anthropic]]")).await;
    assert_eq!(resp.status(), 200, "only= names another instance");
    let resp = post(&mock, &chat("x [[mock:status=503,only=openai]]")).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(mock.stats().faults, 2);
}

#[tokio::test]
async fn header_directives_and_defaults_apply() {
    let mock = MockProvider::start(MockOptions::new("openai").with_defaults("tokens=3"))
        .await
        .unwrap();
    let v: Value = post(&mock, &chat("p")).await.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let resp = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .header("x-mock", "status=418")
        .json(&chat("p"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 418);
}

#[tokio::test]
async fn bad_requests_are_refused_and_counted() {
    let mock = MockProvider::start(MockOptions::new("openai"))
        .await
        .unwrap();
    let resp = post(&mock, &json!({"model": "m"})).await;
    assert_eq!(resp.status(), 400);
    let resp = post(&mock, &chat("x [[mock:colour=blue]]")).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("colour"));
    assert_eq!(mock.stats().requests, 2);
    assert_eq!(mock.stats().completed, 0);
}

#[tokio::test]
async fn api_key_is_required_when_configured() {
    let mock = MockProvider::start(MockOptions::new("openai").with_api_key("sk-mock-1"))
        .await
        .unwrap();
    assert_eq!(post(&mock, &chat("x")).await.status(), 401);
    let resp = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth("sk-mock-1")
        .json(&chat("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn cut_after_ends_the_stream_without_done() {
    let mock = MockProvider::start(MockOptions::new("openai"))
        .await
        .unwrap();
    let mut body = chat("x [[mock:tokens=10,cut_after=3]]");
    body["stream"] = json!(true);
    let data = sse(post(&mock, &body).await).await;
    assert!(!data.iter().any(|d| d == "[DONE]"));
    let contents = data
        .iter()
        .filter(|d| d.contains("\"content\":\"") && !d.contains("\"content\":\"\""))
        .count();
    assert_eq!(contents, 3);
    assert_eq!(mock.stats().cancelled, 0, "a cut is a fault, not a cancel");
    assert_eq!(mock.stats().faults, 1);
}

#[tokio::test]
async fn client_going_away_mid_stream_counts_as_cancelled() {
    let mock = MockProvider::start(MockOptions::new("openai"))
        .await
        .unwrap();
    let mut body = chat("x [[mock:tokens=100,delay_ms=20]]");
    body["stream"] = json!(true);
    let resp = post(&mock, &body).await;
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while mock.stats().cancelled == 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.stats().cancelled, 1);
    assert_eq!(mock.stats().completed, 0);
}

#[tokio::test]
async fn n_choices_and_tool_calls() {
    let mock = MockProvider::start(MockOptions::new("openai"))
        .await
        .unwrap();
    let mut body = chat("two please");
    body["n"] = json!(2);
    let v: Value = post(&mock, &body).await.json().await.unwrap();
    assert_eq!(
        v["choices"][1]["message"]["content"],
        reply_text("two please", DEFAULT_TOKENS, 1)
    );
    let v: Value = post(
        &mock,
        &chat("weather in Oslo [[mock:tool_call=get_weather]]"),
    )
    .await
    .json()
    .await
    .unwrap();
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["query"], "weather in Oslo");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
}
