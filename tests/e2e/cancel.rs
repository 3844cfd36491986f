//! Abandoned and expired requests stop costing tokens.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use sy_protocol::{ErrorCode, ReplyFrame};
use sy_test_support::eventually;

use crate::stack::{Stack, StackOptions, body};

#[tokio::test]
async fn client_disconnect_mid_stream_cancels_the_upstream_call() {
    let stack = Stack::start().await;
    let mut b = body("gpt-4o-mini", "slow story [[mock:tokens=200,delay_ms=50]]");
    b["stream"] = json!(true);
    let resp = stack.chat(&b).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(body);
    let mock = &stack.mock;
    assert!(
        eventually(Duration::from_secs(5), || mock.stats().cancelled == 1).await,
        "the mock never saw the cancel: {:?}",
        mock.stats()
    );
    assert_eq!(mock.stats().completed, 0);
}

#[tokio::test]
async fn client_disconnect_while_waiting_cancels_a_non_streamed_call() {
    let stack = Stack::start().await;
    let b = body("gpt-4o-mini", "think hard [[mock:ttft_ms=10000]]");
    let req = stack
        .chat(&b)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(req.is_err(), "the client gave up first");
    let mock = &stack.mock;
    assert!(
        eventually(Duration::from_secs(5), || mock.stats().cancelled == 1).await,
        "the mock never saw the cancel: {:?}",
        mock.stats()
    );
}

#[tokio::test]
async fn request_past_its_deadline_gets_504_and_the_upstream_call_is_dropped() {
    let stack = Stack::start_with(StackOptions {
        request_timeout: "700ms",
        ..Default::default()
    })
    .await;
    let started = std::time::Instant::now();
    let resp = stack
        .chat(&body("gpt-4o-mini", "hang on [[mock:hang=1]]"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(5));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "deadline_exceeded");
    let mock = &stack.mock;
    assert!(
        eventually(Duration::from_secs(5), || mock.stats().cancelled == 1).await,
        "the hung upstream call was not dropped: {:?}",
        mock.stats()
    );
}

/// A request that waited in the stream past its deadline is answered with an
/// error by the worker and never sent to the provider.
#[tokio::test]
async fn expired_envelope_never_reaches_the_provider() {
    let stack = Stack::start().await;
    let nats = sy_test_support::nats().await;
    let subjects = sy_protocol::Subjects::new(&stack.namespace);
    let request_id = uuid::Uuid::now_v7();
    let reply_to = format!("{}.test-reply.{}", stack.namespace, request_id.as_simple());
    let mut replies = nats.subscribe(reply_to.clone()).await.unwrap();
    let now = sy_protocol::now_unix_ms();
    let envelope =
        crate::stack::envelope(request_id, reply_to, now - 10_000, now - 5_000, "too late");
    let js = async_nats::jetstream::new(nats.clone());
    js.publish(
        subjects.request("openai", "gpt-4o-mini"),
        serde_json::to_vec(&envelope).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), replies.next())
        .await
        .expect("no reply from the worker")
        .unwrap();
    let frame: ReplyFrame = serde_json::from_slice(&msg.payload).unwrap();
    let ReplyFrame::Final(f) = frame else {
        panic!("expected a final frame")
    };
    assert_eq!(f.seq, 0);
    assert_eq!(f.error.unwrap().code, ErrorCode::DeadlineExceeded);
    assert_eq!(stack.mock.stats().requests, 0);
}

/// A stream longer than the consumer's ack wait is kept in progress, not
/// redelivered to a second worker (which would call the provider twice).
#[tokio::test]
async fn long_streams_send_progress_acks_and_are_not_redelivered() {
    let stack = Stack::start_with(StackOptions {
        ack_wait: "1s",
        ..Default::default()
    })
    .await;
    let mut b = body(
        "gpt-4o-mini",
        "a long answer [[mock:tokens=30,delay_ms=100]]",
    );
    b["stream"] = json!(true);
    let started = std::time::Instant::now();
    let data = sy_test_support::sse_data(stack.chat(&b).send().await.unwrap()).await;
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the stream outlived the ack wait"
    );
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    // Give a redelivery (ack wait 1 s) the chance to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        stack.mock.stats().requests,
        1,
        "the request was redelivered"
    );
}
