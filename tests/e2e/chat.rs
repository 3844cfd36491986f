//! The happy paths of /v1/chat/completions, streamed and not.

use serde_json::{Value, json};
use sy_mock_provider::{DEFAULT_TOKENS, reply_text};
use sy_protocol::header;
use sy_test_support::sse_data;

use crate::stack::{Stack, body, content, streamed_content};

#[tokio::test]
async fn non_streamed_answer_is_the_mocks_text_with_routing_headers() {
    let stack = Stack::start().await;
    let resp = stack
        .chat(&body("gpt-4.1", "Tell me about rivers"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h[header::PROVIDER], "openai");
    assert_eq!(h[header::MODEL], "gpt-4.1-2025");
    assert!(uuid::Uuid::parse_str(h[header::REQUEST_ID].to_str().unwrap()).is_ok());
    assert!(
        h.get("content-length").is_some(),
        "non-streamed bodies carry Content-Length"
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        content(&v),
        reply_text("Tell me about rivers", DEFAULT_TOKENS, 0)
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(stack.mock.stats().requests, 1);
}

#[tokio::test]
async fn streamed_answer_concatenates_to_the_non_streamed_one() {
    let stack = Stack::start().await;
    let prompt = "Explain tides [[mock:tokens=40]]";
    let plain: Value = stack
        .chat(&body("gpt-4o-mini", prompt))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut b = body("gpt-4o-mini", prompt);
    b["stream"] = json!(true);
    let resp = stack.chat(&b).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()[header::PROVIDER], "openai");
    let data = sse_data(resp).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let text = streamed_content(&data, 0);
    assert_eq!(text, content(&plain));
    assert_eq!(text, reply_text("Explain tides", 40, 0));
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    // Without include_usage, no chunk carries usage.
    assert!(data.iter().all(|d| !d.contains("\"usage\"")));
    let finishes: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter(|v| !v["choices"][0]["finish_reason"].is_null())
        .collect();
    assert_eq!(finishes.len(), 1);
    assert_eq!(finishes[0]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn usage_passes_through_streamed_and_not() {
    let stack = Stack::start().await;
    let prompt = "one two three four [[mock:tokens=7]]";
    let plain: Value = stack
        .chat(&body("gpt-4o-mini", prompt))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plain["usage"]["completion_tokens"], 7);
    let prompt_tokens = plain["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 0);
    assert_eq!(
        plain["usage"]["total_tokens"].as_u64().unwrap(),
        prompt_tokens + 7
    );

    let mut b = body("gpt-4o-mini", prompt);
    b["stream"] = json!(true);
    b["stream_options"] = json!({"include_usage": true});
    let data = sse_data(stack.chat(&b).send().await.unwrap()).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let usage_chunk: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], plain["usage"]);
    let earlier: Value = serde_json::from_str(&data[0]).unwrap();
    assert!(earlier["usage"].is_null() && earlier.as_object().unwrap().contains_key("usage"));
}

#[tokio::test]
async fn tool_calls_stream_as_deltas_that_assemble_into_json() {
    let stack = Stack::start().await;
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let mut b = body(
        "gpt-4o-mini",
        "Weather in Paris? [[mock:tool_call=get_weather]]",
    );
    b["tools"] = tools;
    b["tool_choice"] = json!("auto");

    let plain: Value = stack.chat(&b).send().await.unwrap().json().await.unwrap();
    let call = &plain["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["type"], "function");
    assert_eq!(plain["choices"][0]["finish_reason"], "tool_calls");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args.is_object());

    b["stream"] = json!(true);
    let data = sse_data(stack.chat(&b).send().await.unwrap()).await;
    let mut name = String::new();
    let mut arguments = String::new();
    let mut fragments = 0;
    let mut finish = None;
    for d in data.iter().filter(|d| d.as_str() != "[DONE]") {
        let v: Value = serde_json::from_str(d).unwrap();
        let choice = &v["choices"][0];
        if let Some(calls) = choice["delta"]["tool_calls"].as_array() {
            for c in calls {
                assert_eq!(c["index"], 0);
                if let Some(n) = c["function"]["name"].as_str() {
                    name.push_str(n);
                }
                if let Some(a) = c["function"]["arguments"].as_str() {
                    arguments.push_str(a);
                    fragments += 1;
                }
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
    }
    assert_eq!(name, "get_weather");
    assert!(
        fragments >= 3,
        "arguments arrive in pieces, got {fragments}"
    );
    assert_eq!(arguments, call["function"]["arguments"].as_str().unwrap());
    assert_eq!(finish.as_deref(), Some("tool_calls"));
}

#[tokio::test]
async fn n_choices_and_content_parts_are_supported() {
    let stack = Stack::start().await;
    let b = json!({
        "model": "gpt-4o-mini",
        "n": 2,
        "temperature": 0.5, "top_p": 0.9, "max_completion_tokens": 50, "seed": 7,
        "stop": ["\n\n"], "user": "u-1", "response_format": {"type": "text"},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "text", "text": "the sea"}]}
        ]
    });
    let v: Value = stack.chat(&b).send().await.unwrap().json().await.unwrap();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(
            c["message"]["content"].as_str().unwrap(),
            reply_text("Describe\nthe sea", DEFAULT_TOKENS, i)
        );
    }
}

#[tokio::test]
async fn models_endpoint_lists_configured_models() {
    let stack = Stack::start().await;
    let v: Value = stack
        .http
        .get(stack.url("/v1/models"))
        .bearer_auth(crate::stack::KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            "auto",
            "auto:canary",
            "auto:fast",
            "auto:media",
            "bge-reranker-v2-m3",
            "chain",
            "chain-lenient",
            "chain-splice",
            "chain-strict",
            "claude-sonnet-4-5",
            "command-r-plus",
            "embed-v4.0",
            "gemini-2.5-flash",
            "gemini-2.5-flash-image",
            "gemini-embedding-001",
            "gpt-4.1",
            "gpt-4o-mini",
            "gpt-image-1",
            "pipeline:blog",
            "pipeline:sturdy",
            "rerank-v3.5",
            "text-embedding-3-small",
            "tts-1",
            "whisper-1"
        ]
    );
    assert_eq!(v["object"], "list");
    // A reranker lists the one API it serves, over both its targets.
    let rerank = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "rerank-v3.5")
        .unwrap();
    assert_eq!(
        rerank["switchyard"]["surfaces"],
        json!(["rerank"]),
        "{rerank}"
    );
    assert_eq!(
        rerank["switchyard"]["targets"].as_array().unwrap().len(),
        2,
        "{rerank}"
    );
}

#[tokio::test]
async fn provider_errors_map_to_openai_errors_with_matching_status() {
    let stack = Stack::start().await;
    let cases = [
        ("[[mock:status=429,retry_after=3]]", 429, "rate_limited"),
        ("[[mock:status=400]]", 400, "provider_error"),
        ("[[mock:status=500]]", 502, "provider_error"),
        ("[[mock:status=503]]", 502, "provider_error"),
    ];
    for (directive, status, code) in cases {
        for stream in [false, true] {
            let mut b = body("gpt-4o-mini", &format!("hi {directive}"));
            b["stream"] = json!(stream);
            let resp = stack.chat(&b).send().await.unwrap();
            assert_eq!(resp.status(), status, "{directive} stream={stream}");
            assert_eq!(resp.headers()[header::PROVIDER], "openai");
            if status == 429 {
                assert_eq!(resp.headers()["retry-after"], "3");
            }
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["code"], code, "{directive}");
            assert!(v["error"]["message"].as_str().unwrap().contains("openai"));
        }
    }
}

#[tokio::test]
async fn stream_cut_by_the_provider_ends_with_an_error_event() {
    let stack = Stack::start().await;
    let mut b = body("gpt-4o-mini", "long story [[mock:tokens=20,cut_after=5]]");
    b["stream"] = json!(true);
    let resp = stack.chat(&b).send().await.unwrap();
    assert_eq!(resp.status(), 200, "tokens were already on their way");
    let data = sse_data(resp).await;
    assert_ne!(data.last().map(String::as_str), Some("[DONE]"));
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "provider_error");
    assert!(!streamed_content(&data, 0).is_empty());
}

/// The stages of an answer's `Server-Timing`, in order.
fn stages_of(resp: &reqwest::Response) -> Vec<(String, f64)> {
    resp.headers()[header::SERVER_TIMING]
        .to_str()
        .unwrap()
        .split(", ")
        .map(|e| {
            let (name, dur) = e.split_once(";dur=").unwrap();
            (name.to_owned(), dur.parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn a_client_that_asks_is_told_where_its_requests_time_went() {
    let stack = Stack::start().await;
    // Not asked: no stages.
    let resp = stack.chat(&body("gpt-4o-mini", "hi")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get(header::SERVER_TIMING).is_none());
    for stream in [false, true] {
        let mut b = body("gpt-4o-mini", "Where did the time go? [[mock:ttft_ms=60]]");
        b["stream"] = json!(stream);
        let resp = stack
            .chat(&b)
            .header(header::TIMING, "stages")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let stages = stages_of(&resp);
        let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "intake",
                "auth",
                "body",
                "parse",
                "admit",
                "limits",
                "prepare",
                "serialise",
                "worker_decode",
                "worker_setup",
                "provider",
                "queue",
                "ack",
                "relay",
                "total"
            ],
            "stream: {stream}"
        );
        let of = |n: &str| stages.iter().find(|(m, _)| m == n).unwrap().1;
        // The provider's time is the worker's (the mock waited 60 ms before
        // its first token), not the queue's.
        assert!(of("provider") >= 60.0, "{stages:?}");
        assert!(of("queue") < 60.0, "{stages:?}");
        assert!(of("ack") <= of("queue") + of("provider"), "{stages:?}");
        let added: f64 = stages
            .iter()
            .filter(|(n, _)| n != "ack" && n != "total")
            .map(|(_, d)| d)
            .sum();
        assert!((added - of("total")).abs() < 0.01, "{stages:?}");
        // The answer itself is whole.
        if stream {
            let data = sse_data(resp).await;
            assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        } else {
            let v: Value = resp.json().await.unwrap();
            assert_eq!(
                content(&v),
                reply_text("Where did the time go?", DEFAULT_TOKENS, 0)
            );
        }
    }
}
