//! The request's class: classified in the ingress, reported in a header and
//! recorded in the usage row; client hints win over the model.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::stack::{Stack, StackOptions, body};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_is_decided_reported_and_recorded() {
    let stack = Stack::start_with(StackOptions {
        clickhouse: true,
        ..Default::default()
    })
    .await;
    let class_of = |resp: &reqwest::Response| {
        resp.headers()
            .get("x-switchyard-class")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    type Case = (Value, Option<(&'static str, &'static str)>, &'static str);
    let cases: [Case; 5] = [
        (
            body(
                "gpt-4o-mini",
                "Write a Python function that merges two sorted lists.",
            ),
            None,
            "code",
        ),
        (
            body(
                "gpt-4o-mini",
                "Generate an image of a lighthouse at dusk, oil painting",
            ),
            None,
            "image",
        ),
        (
            body("gpt-4o-mini", "what's up"),
            Some(("x-switchyard-class", "complex")),
            "complex",
        ),
        (
            body("gpt-4o-mini", "what's up"),
            Some(("x-switchyard-task-type", "creative_writing")),
            "medium",
        ),
        (
            json!({"model": "gpt-4o-mini", "metadata": {"task_type": "code"},
                "messages": [{"role": "user", "content": "hello there"}]}),
            None,
            "code",
        ),
    ];
    for (b, header, want) in &cases {
        let mut req = stack.chat(b);
        if let Some((k, v)) = header {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(class_of(&resp).as_deref(), Some(*want), "{b}");
    }
    // Image parts decide structurally.
    let img = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]});
    let resp = stack.chat(&img).send().await.unwrap();
    assert_eq!(class_of(&resp).as_deref(), Some("image"));
    // A bad class hint is a 400 that never reaches a provider.
    let before = stack.mock.stats().requests;
    let resp = stack
        .chat(&body("gpt-4o-mini", "x"))
        .header("x-switchyard-class", "gigantic")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["param"], "x-switchyard-class");
    assert_eq!(stack.mock.stats().requests, before);

    // The usage rows carry the classes, in order.
    let ch = stack.clickhouse.as_ref().unwrap();
    let client = sy_accounting::client(ch);
    let until = Instant::now() + Duration::from_secs(15);
    let classes: Vec<String> = loop {
        let rows: Vec<String> = client
            .query(&format!(
                "SELECT class FROM {}.requests FINAL ORDER BY received_ms",
                ch.database
            ))
            .fetch_all()
            .await
            .unwrap();
        if rows.len() >= 6 || Instant::now() > until {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        classes,
        ["code", "image", "complex", "medium", "code", "image"]
    );
}
