//! Many requests at once each get their own answer.

use serde_json::{Value, json};
use sy_mock_provider::reply_text;
use sy_test_support::sse_data;

use crate::stack::{Stack, body, content, streamed_content};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_each_receive_their_own_answer() {
    let stack = Stack::start().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let req = {
            let prompt = format!(
                "request number {i} [[mock:tokens={},delay_ms=1]]",
                5 + i % 20
            );
            let mut b = body("gpt-4o-mini", &prompt);
            b["stream"] = json!(i % 2 == 0);
            stack.chat(&b)
        };
        tasks.push(tokio::spawn(async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200, "request {i}");
            let text = if i % 2 == 0 {
                streamed_content(&sse_data(resp).await, 0)
            } else {
                let v: Value = resp.json().await.unwrap();
                content(&v).to_owned()
            };
            assert_eq!(
                text,
                reply_text(&format!("request number {i}"), 5 + i % 20, 0),
                "request {i}"
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(stack.mock.stats().requests, 200);
    assert_eq!(stack.mock.stats().completed, 200);
}
