//! `Idempotency-Key`: a retried request gets the first result and never
//! reaches a provider twice (docs/reliability.md).

use std::time::Duration;

use serde_json::{Value, json};

use crate::stack::{OTHER_KEY, Stack, body};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_gets_the_first_result_without_a_second_provider_call() {
    let stack = Stack::start().await;
    let calls = || stack.mock.stats().requests;
    let send = |b: &Value, key: &str| stack.chat(b).header("Idempotency-Key", key).send();
    let b = body("gpt-4o-mini", "charge the card once");
    let first = send(&b, "k-1").await.unwrap();
    assert_eq!(first.status(), 200);
    let id = first.headers()["x-switchyard-request-id"].clone();
    let first_body = first.bytes().await.unwrap();
    assert_eq!(calls(), 1);
    let again = send(&b, "k-1").await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["x-switchyard-request-id"], id);
    assert_eq!(again.bytes().await.unwrap(), first_body, "the same answer");
    assert_eq!(calls(), 1, "no second provider call");

    // The same key with another body is a client error.
    let other = body("gpt-4o-mini", "something else");
    let resp = send(&other, "k-1").await.unwrap();
    assert_eq!(resp.status(), 422);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["param"], "idempotency-key", "{v}");

    // Another tenant's identical key is its own.
    let resp = stack
        .http
        .post(stack.url("/v1/chat/completions"))
        .bearer_auth(OTHER_KEY)
        .header("Idempotency-Key", "k-1")
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("idempotent-replayed").is_none());
    assert_eq!(calls(), 2);

    // While the first runs, a retry gets 409; after it, the result.
    let slow = body("gpt-4o-mini", "slow [[mock:ttft_ms=1500]]");
    let running = tokio::spawn(send(&slow, "k-2"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let resp = send(&slow, "k-2").await.unwrap();
    assert_eq!(resp.status(), 409);
    assert!(resp.headers().contains_key("retry-after"));
    let first = running.await.unwrap().unwrap();
    assert_eq!(first.status(), 200);
    let first_body = first.bytes().await.unwrap();
    let resp = send(&slow, "k-2").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), first_body);
    assert_eq!(calls(), 3);

    // A stream replays as the same event stream.
    let mut streamed = body("gpt-4o-mini", "stream it [[mock:tokens=5]]");
    streamed["stream"] = json!(true);
    let first = send(&streamed, "k-3").await.unwrap().text().await.unwrap();
    assert!(first.ends_with("data: [DONE]\n\n"), "{first}");
    let resp = send(&streamed, "k-3").await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.text().await.unwrap(), first);
    assert_eq!(calls(), 4);

    // A provider failure (5xx) is not kept: the retry runs again.
    let failing = body("gpt-4o-mini", "fail [[mock:status=500]]");
    assert_eq!(send(&failing, "k-4").await.unwrap().status(), 502);
    assert_eq!(send(&failing, "k-4").await.unwrap().status(), 502);
    assert_eq!(calls(), 6);

    // A bad key header is refused in the client's format.
    let resp = send(&b, " ").await.unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_mark_left_by_a_dead_ingress_is_released() {
    use sha2::{Digest, Sha256};
    let stack = Stack::start().await;
    // What an ingress that died mid-request leaves: a `running` mark, long ago.
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let b = body("gpt-4o-mini", "once");
    let body_bytes = serde_json::to_vec(&b).unwrap();
    let js = async_nats::jetstream::new(sy_test_support::nats().await);
    let bucket = format!("{}_IDEMPOTENCY", stack.namespace.to_ascii_uppercase());
    let kv = js.get_key_value(&bucket).await.unwrap();
    let key = hex(&Sha256::digest(b"test\0k-dead"));
    let mark = json!({"state": "running", "body_sha256": hex(&Sha256::digest(&body_bytes)),
        "started_unix_ms": 1});
    kv.put(&key, serde_json::to_vec(&mark).unwrap().into())
        .await
        .unwrap();
    let send = || {
        stack
            .http
            .post(stack.url("/v1/chat/completions"))
            .bearer_auth(crate::stack::KEY)
            .header("Idempotency-Key", "k-dead")
            .header("content-type", "application/json")
            .body(body_bytes.clone())
            .send()
    };
    let resp = send().await.unwrap();
    crate::stack::refused(resp, 409, "abandoned").await;
    let resp = send().await.unwrap();
    assert_eq!(resp.status(), 200, "the retry after the release runs");
    assert_eq!(stack.mock.stats().requests, 1);
}
