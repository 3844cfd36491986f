//! Real messages on the bus match the JSON Schemas in schemas/ and round-trip
//! through the Rust types.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use sy_protocol::{Cancel, Observation, ReplyFrame, RequestEnvelope, UsageEvent};
use sy_test_support::{eventually, repo_root};

use crate::stack::{Stack, body};

fn validator(name: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo_root().join("schemas").join(name)).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn check<T: serde::de::DeserializeOwned + serde::Serialize>(
    v: &jsonschema::Validator,
    msg: &Value,
) {
    let errors: Vec<String> = v
        .iter_errors(msg)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{msg}\n{errors:?}");
    let typed: T = serde_json::from_value(msg.clone()).unwrap();
    assert_eq!(
        &serde_json::to_value(&typed).unwrap(),
        msg,
        "round trip changed the message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_messages_match_their_schemas() {
    let stack = Stack::start().await;
    let nats = sy_test_support::nats().await;
    let mut sub = nats
        .subscribe(format!("{}.>", stack.namespace))
        .await
        .unwrap();
    nats.flush().await.unwrap();

    let mut streamed = body("gpt-4o-mini", "stream me [[mock:tokens=3]]");
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let mut tools = body("gpt-4o-mini", "call [[mock:tool_call=lookup]]");
    tools["tools"] = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]);
    for b in [
        body("gpt-4o-mini", "plain"),
        streamed,
        tools,
        body("gpt-4o-mini", "fail [[mock:status=429,retry_after=1]]"),
        // A fallback: the envelope is republished to the next target.
        body("chain", "fall back [[mock:status=500,only=openai]]"),
    ] {
        let resp = stack.chat(&b).send().await.unwrap();
        assert!(
            resp.status() == 200 || resp.status() == 429,
            "unexpected status {}",
            resp.status()
        );
        let _ = resp.bytes().await.unwrap();
    }
    // Another client API, and embeddings (one frame per vector).
    let resp = stack
        .messages(
            &json!({"model": "claude-sonnet-4-5", "max_tokens": 20, "stream": true,
            "messages": [{"role": "user", "content": "hello [[mock:tokens=3]]"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await.unwrap();
    let resp = stack
        .http
        .post(stack.url("/v1/embeddings"))
        .bearer_auth(crate::stack::KEY)
        .json(&json!({"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await.unwrap();
    // A cancelled request.
    let _ = stack
        .chat(&body("gpt-4o-mini", "wait [[mock:hang=1]]"))
        .timeout(Duration::from_millis(1500))
        .send()
        .await;
    let mock = &stack.mock;
    assert!(eventually(Duration::from_secs(5), || mock.stats().cancelled == 1).await);

    let envelope = validator("request-envelope.schema.json");
    let frame = validator("reply-frame.schema.json");
    let cancel = validator("cancel.schema.json");
    let usage = validator("usage-event.schema.json");
    let observation = validator("observation.schema.json");
    let mut seen = [0usize; 5];
    let mut failed_observations = 0;
    let mut finals_with_error = 0;
    let mut embedding_frames = 0;
    // Until every expected message arrived (9 envelopes and 9 usage events: 8
    // requests, one of them republished to its fallback; a cancel; 8
    // observations: all but the cancelled call), then 1 s more for strays; at
    // most 15 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let complete = seen[0] >= 9 && seen[3] >= 9 && seen[2] >= 1 && seen[4] >= 8;
        let wait = if complete {
            Duration::from_secs(1)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        let Ok(Some(msg)) = tokio::time::timeout(wait, sub.next()).await else {
            break;
        };
        let v: Value = serde_json::from_slice(&msg.payload).unwrap();
        let kind = msg.subject.split('.').nth(1).unwrap();
        match kind {
            "req" => {
                check::<RequestEnvelope>(&envelope, &v);
                seen[0] += 1;
            }
            // f32 vectors print shorter than the f64 that JSON values hold: check
            // the schema and the typed parse, not byte equality.
            "reply" if v["type"] == "embedding" => {
                assert!(frame.is_valid(&v), "{v}");
                let typed: ReplyFrame = serde_json::from_value(v.clone()).unwrap();
                assert!(matches!(typed, ReplyFrame::Embedding(_)));
                embedding_frames += 1;
                seen[1] += 1;
            }
            "reply" => {
                check::<ReplyFrame>(&frame, &v);
                if v["type"] == "final" && v.get("error").is_some() {
                    finals_with_error += 1;
                }
                seen[1] += 1;
            }
            "cancel" => {
                check::<Cancel>(&cancel, &v);
                seen[2] += 1;
            }
            "usage" => {
                check::<UsageEvent>(&usage, &v);
                seen[3] += 1;
            }
            "live" => {
                check::<Observation>(&observation, &v);
                if v["outcome"] == "failed" {
                    failed_observations += 1;
                }
                seen[4] += 1;
            }
            other => panic!("unexpected subject kind {other} ({})", msg.subject),
        }
    }
    assert_eq!(seen[0], 9, "one envelope per request, and the fallback's");
    assert_eq!(embedding_frames, 2, "one frame per vector");
    assert!(seen[1] >= 10, "chunks and finals: {seen:?}");
    assert!(seen[2] >= 1, "the abandoned request was cancelled");
    assert_eq!(seen[3], 9, "one usage event per attempt");
    assert_eq!(finals_with_error, 1);
    assert_eq!(seen[4], 8, "one observation per call that ran to its end");
    assert_eq!(failed_observations, 2, "the 429 and the 500");
}

#[test]
fn schemas_reject_malformed_messages() {
    let frame = validator("reply-frame.schema.json");
    assert!(!frame.is_valid(&json!({"type": "chunk", "seq": -1, "choices": []})));
    assert!(
        !frame.is_valid(
            &json!({"type": "final", "seq": 0, "error": {"code": "nope", "message": "x"}})
        )
    );
    assert!(frame.is_valid(
        &json!({"type": "final", "seq": 0, "error": {"code": "rate_limited", "message": "x"}})
    ));
    let envelope = validator("request-envelope.schema.json");
    assert!(!envelope.is_valid(&json!({"request_id": "x"})));
}
