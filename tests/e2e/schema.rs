//! Real messages on the bus match the JSON Schemas in schemas/ and round-trip
//! through the Rust types.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use sy_protocol::{Cancel, Observation, ReplyFrame, RequestEnvelope, UsageEvent};
use sy_test_support::{eventually, repo_root};

use crate::stack::{Stack, body};

/// A usage message's events: the whole payload, or one per line when the
/// rows header says so.
fn usage_rows(msg: &async_nats::Message) -> Vec<Value> {
    let rows = msg
        .headers
        .as_ref()
        .is_some_and(|h| h.get(sy_protocol::header::USAGE_ROWS).is_some());
    sy_protocol::legacy::usage_lines(&msg.payload, rows)
        .map(|l| serde_json::from_slice(l).unwrap_or(Value::Null))
        .collect()
}

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
    // The subscription is live once it hears its own probe (a flush alone
    // let the first request's envelope slip by about one run in five).
    let probe = format!("{}.probe", stack.namespace);
    loop {
        nats.publish(probe.clone(), "p".into()).await.unwrap();
        nats.flush().await.unwrap();
        match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            Ok(Some(m)) if m.subject.as_str() == probe => break,
            _ => {}
        }
    }

    let mut attempts = Vec::new();
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
        // Asking for the stages puts them in the envelope and the frames too.
        let resp = stack
            .chat(&b)
            .header(sy_protocol::header::TIMING, "stages")
            .send()
            .await
            .unwrap();
        assert!(
            resp.status() == 200 || resp.status() == 429,
            "unexpected status {}",
            resp.status()
        );
        attempts.push(attempts_of(&resp));
        let _ = resp.bytes().await.unwrap();
    }
    // The router may send the chain straight to its fallback when it sees the
    // primary saturated or failing (under a loaded machine it can): then the
    // chain made one envelope, not two.
    let chain_attempts = attempts[4];
    assert!((1..=2).contains(&chain_attempts), "{attempts:?}");
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
    attempts.push(attempts_of(&resp));
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
    attempts.push(attempts_of(&resp));
    let _ = resp.bytes().await.unwrap();
    // A rerank (one frame with the ranking; a search unit on its usage).
    let resp = stack
        .http
        .post(stack.url("/v1/rerank"))
        .bearer_auth(crate::stack::KEY)
        .json(
            &json!({"model": "rerank-v3.5", "query": "a", "documents": ["a", "b"],
            "return_documents": true, "truncation": false}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    attempts.push(attempts_of(&resp));
    let _ = resp.bytes().await.unwrap();
    // Images: one small inline, one through the blob store.
    let resp = stack
        .http
        .post(stack.url("/v1/images/generations"))
        .bearer_auth(crate::stack::KEY)
        .json(&json!({"model": "gpt-image-1", "prompt": "a", "n": 1, "size": "400x400", "style": "vivid"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    attempts.push(attempts_of(&resp));
    let _ = resp.bytes().await.unwrap();
    // A transcription (its upload in the blob store, one text frame).
    let form = reqwest::multipart::Form::new()
        .text("model", "whisper-1")
        .text("response_format", "srt")
        .part(
            "file",
            reqwest::multipart::Part::bytes(sy_mock_provider::audio::wav(0.5)).file_name("a.wav"),
        );
    let resp = stack
        .http
        .post(stack.url("/v1/audio/transcriptions"))
        .bearer_auth(crate::stack::KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    attempts.push(attempts_of(&resp));
    let _ = resp.bytes().await.unwrap();
    // Speech (bytes frames).
    let resp = stack
        .http
        .post(stack.url("/v1/audio/speech"))
        .bearer_auth(crate::stack::KEY)
        .json(&json!({"model": "tts-1", "input": "Hello there.", "voice": "alloy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    attempts.push(attempts_of(&resp));
    let _ = resp.bytes().await.unwrap();
    // A cancelled request (one envelope, no observation).
    let envelopes = attempts.iter().sum::<usize>() + 1;
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
    let mut rerank_frames = 0;
    let mut blob_frames = 0;
    let mut text_frames = 0;
    let mut bytes_frames = 0;
    // Until every expected message arrived (usually 13 envelopes and 13 usage
    // events: 12 requests, one of them republished to its fallback; a cancel;
    // 12 observations, successes summed per target: all but the cancelled
    // call), then 1 s more for strays;
    // at most 15 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let complete = seen[0] >= envelopes
            && seen[3] >= envelopes
            && seen[2] >= 1
            && seen[4] + 1 >= envelopes;
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
                if v["type"] == "rerank" {
                    rerank_frames += 1;
                }
                if v["type"] == "image" && v["image"].get("blob").is_some() {
                    blob_frames += 1;
                }
                if v["type"] == "text" {
                    text_frames += 1;
                }
                if v["type"] == "bytes" {
                    bytes_frames += 1;
                }
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
                // A worker stores the events that wait together as one message.
                for v in usage_rows(&msg) {
                    check::<UsageEvent>(&usage, &v);
                    seen[3] += 1;
                }
            }
            "live" => {
                check::<Observation>(&observation, &v);
                if v["outcome"] == "failed" {
                    failed_observations += 1;
                }
                // Successes come summed per target (`calls`, absent for one).
                seen[4] += v["calls"].as_u64().map_or(1, |n| n as usize);
            }
            other => panic!("unexpected subject kind {other} ({})", msg.subject),
        }
    }
    assert_eq!(
        seen[0], envelopes,
        "one envelope per request, and the fallback's: {attempts:?}"
    );
    assert_eq!(embedding_frames, 2, "one frame per vector");
    assert_eq!(rerank_frames, 1, "one frame per ranking");
    assert_eq!(
        blob_frames, 1,
        "a 400×400 image goes through the blob store"
    );
    assert_eq!(text_frames, 1, "a transcript is one text frame");
    assert!(bytes_frames >= 1, "speech comes as bytes frames");
    assert!(seen[1] >= 10, "chunks and finals: {seen:?}");
    assert!(seen[2] >= 1, "the abandoned request was cancelled");
    assert_eq!(seen[3], envelopes, "one usage event per attempt");
    assert_eq!(finals_with_error, 1);
    assert_eq!(
        seen[4] + 1,
        envelopes,
        "one observation per call that ran to its end"
    );
    assert_eq!(
        failed_observations, chain_attempts,
        "the 429, and the 500 when the chain tried its primary"
    );
}

/// Calls the request made (`x-switchyard-attempts`: with no retries configured,
/// one envelope each).
fn attempts_of(resp: &reqwest::Response) -> usize {
    resp.headers()
        .get("x-switchyard-attempts")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
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

/// A validator for one `$defs` entry of schemas/batch.schema.json.
fn batch_validator(def: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo_root().join("schemas/batch.schema.json")).unwrap();
    let mut schema: Value = serde_json::from_str(&text).unwrap();
    let defs = schema["$defs"].take();
    jsonschema::validator_for(&json!({"$defs": defs, "$ref": format!("#/$defs/{def}")})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_messages_match_their_schemas() {
    use sy_protocol::batch::{BatchDone, BatchJob, BatchRecord, BatchResult};
    let stack = Stack::start().await;
    let nats = sy_test_support::nats().await;
    let ns = stack.namespace.clone();
    let mut sub = nats.subscribe(format!("{ns}.>")).await.unwrap();
    nats.flush().await.unwrap();
    // A native job with two lines, one of which fails at the provider.
    let line = |id: &str, prompt: &str| {
        json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
               "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}})
    };
    let job = json!({"id": "batch_schema1", "key_id": "test", "endpoint": "/v1/chat/completions",
                     "completion_window": "24h",
                     "requests": [line("a", "hello"), line("b", "[[mock:status=500]] fail")]});
    let js = async_nats::jetstream::new(nats.clone());
    js.publish(
        format!("{ns}.batch.submit"),
        serde_json::to_vec(&job).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let (jobs, results, dones, envelope, usage) = (
        batch_validator("job"),
        batch_validator("result"),
        batch_validator("done"),
        validator("request-envelope.schema.json"),
        validator("usage-event.schema.json"),
    );
    let mut seen = [0usize; 5];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen[3] == 0 {
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(Some(msg)) = tokio::time::timeout(wait, sub.next()).await else {
            break;
        };
        let v: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
        let subject = msg.subject.as_str();
        if subject == format!("{ns}.batch.submit") {
            check::<BatchJob>(&jobs, &v);
            seen[0] += 1;
        } else if subject.starts_with(&format!("{ns}.breq.")) {
            check::<RequestEnvelope>(&envelope, &v);
            assert_eq!(v["batch"]["batch_id"], "batch_schema1");
            seen[1] += 1;
        } else if subject.starts_with(&format!("{ns}.batch.result.")) {
            check::<BatchResult>(&results, &v);
            seen[2] += 1;
        } else if subject.starts_with(&format!("{ns}.batch.done.")) {
            check::<BatchDone>(&dones, &v);
            seen[3] += 1;
        } else if subject == format!("{ns}.usage") {
            for v in usage_rows(&msg) {
                if v.get("batch_id").is_some() {
                    check::<UsageEvent>(&usage, &v);
                    seen[4] += 1;
                }
            }
        }
    }
    assert_eq!(seen[..4], [1, 2, 2, 1], "job, items, results, announcement");
    assert!(seen[4] >= 2, "usage events carry the batch id: {seen:?}");
    // The record in the KV bucket.
    let kv = js
        .get_key_value(sy_protocol::Subjects::new(&ns).batches_bucket())
        .await
        .unwrap();
    let record: Value =
        serde_json::from_slice(&kv.get("batch_schema1").await.unwrap().unwrap()).unwrap();
    check::<BatchRecord>(&batch_validator("record"), &record);
    assert_eq!(record["batch"]["request_counts"]["failed"], 1);
}
