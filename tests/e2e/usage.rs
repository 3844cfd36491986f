//! Every attempt produces exactly one usage event with the provider's token
//! counts and the price table's cost.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use sy_protocol::{TokenSource, UsageEvent, UsageStatus};
use sy_test_support::eventually;

use crate::stack::{Stack, body};

async fn events(stack: &Stack, expected: usize) -> Vec<UsageEvent> {
    let nats = sy_test_support::nats().await;
    let js = async_nats::jetstream::new(nats);
    let subjects = sy_protocol::Subjects::new(&stack.namespace);
    let stream = js.get_stream(subjects.usage_stream()).await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut batch = consumer
        .fetch()
        .max_messages(expected + 10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    // A worker stores the events that wait together in one message.
    while let Some(Ok(msg)) = batch.next().await {
        let rows = msg
            .headers
            .as_ref()
            .is_some_and(|h| h.get(sy_protocol::header::USAGE_ROWS).is_some());
        for line in sy_protocol::legacy::usage_lines(&msg.payload, rows) {
            out.push(serde_json::from_slice(line).unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_yields_one_usage_event_with_provider_tokens_and_exact_cost() {
    let stack = Stack::start().await;
    let mut reported = HashMap::new();
    for i in 0..10 {
        let mut b = body(
            "gpt-4o-mini",
            &format!("count me {i} [[mock:tokens={}]]", 5 + i),
        );
        b["stream"] = json!(i % 2 == 0);
        b["stream_options"] = if i % 2 == 0 {
            json!({"include_usage": true})
        } else {
            serde_json::Value::Null
        };
        if i % 2 == 1 {
            b.as_object_mut().unwrap().remove("stream_options");
        }
        let resp = stack.chat(&b).send().await.unwrap();
        let id = resp.headers()[sy_protocol::header::REQUEST_ID]
            .to_str()
            .unwrap()
            .to_owned();
        let text = resp.text().await.unwrap();
        let usage: serde_json::Value = if i % 2 == 0 {
            let line = text.lines().rfind(|l| l.contains("\"usage\":{")).unwrap();
            serde_json::from_str::<serde_json::Value>(&line[6..]).unwrap()["usage"].clone()
        } else {
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["usage"].clone()
        };
        reported.insert(id, usage);
    }
    let events = events(&stack, 10).await;
    assert_eq!(events.len(), 10, "exactly one event per attempt");
    for e in &events {
        let u = &reported[&e.request_id.to_string()];
        assert_eq!(e.status, UsageStatus::Ok);
        assert_eq!(e.attempt, 1);
        assert_eq!(e.provider, "openai");
        assert_eq!(e.input_tokens_source, TokenSource::Provider);
        assert_eq!(
            e.tokens.input_tokens + e.tokens.cached_input_tokens,
            u["prompt_tokens"].as_u64().unwrap()
        );
        assert_eq!(
            e.tokens.output_tokens,
            u["completion_tokens"].as_u64().unwrap()
        );
        // $0.15 / $0.60 per million, rounded half up once; billed +20 %.
        let expected = (e.tokens.input_tokens * 150
            + e.tokens.cached_input_tokens * 75
            + e.tokens.output_tokens * 600) as i64;
        assert_eq!(e.cost_nanos, Some(expected));
        assert_eq!(e.billed_nanos, Some((expected * 12 + 5) / 10));
        assert!(e.latency_ms >= e.queue_wait_ms);
        assert!(e.ttft_ms.is_some());
        assert!(!e.client_disconnected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_by_the_client_is_billed_with_estimated_tokens() {
    let stack = Stack::start().await;
    let mut b = body(
        "gpt-4o-mini",
        "a long story please [[mock:tokens=200,delay_ms=20]]",
    );
    b["stream"] = json!(true);
    let resp = stack.chat(&b).send().await.unwrap();
    let mut stream = resp.bytes_stream();
    for _ in 0..3 {
        stream.next().await.unwrap().unwrap();
    }
    drop(stream);
    let mock = &stack.mock;
    assert!(eventually(Duration::from_secs(5), || mock.stats().cancelled == 1).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = events(&stack, 1).await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.status, UsageStatus::Cancelled);
    assert!(e.client_disconnected);
    assert_eq!(e.output_tokens_source, TokenSource::Estimated);
    assert!(e.tokens.input_tokens > 0, "the prompt is billed");
    assert!(
        e.tokens.output_tokens > 0 && e.tokens.output_tokens < 200,
        "only what was generated: {}",
        e.tokens.output_tokens
    );
    assert!(e.cost_nanos.unwrap() > 0);
}

#[tokio::test]
async fn a_provider_error_counts_no_tokens() {
    let stack = Stack::start().await;
    let resp = stack
        .chat(&body("gpt-4o-mini", "x [[mock:status=500]]"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let events = events(&stack, 1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].status, UsageStatus::Error);
    assert_eq!(events[0].provider_status, Some(500));
    assert_eq!(events[0].input_tokens_source, TokenSource::None);
    assert_eq!(events[0].cost_nanos, Some(0));
}
