//! The ingress and workers survive a NATS restart without being restarted.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::stack::{Stack, StackOptions, body, content};

#[tokio::test]
async fn nats_restart_mid_run_then_later_requests_succeed() {
    let mut nats = sy_test_support::NatsServer::start().await;
    let stack = Stack::start_with(StackOptions {
        nats_url: nats.url(),
        ..Default::default()
    })
    .await;
    let resp = stack
        .chat(&body("gpt-4o-mini", "before"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    nats.stop();
    let started = Instant::now();
    let resp = stack
        .chat(&body("gpt-4o-mini", "during"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503, "NATS down: fail fast");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "bus_unavailable");

    nats.restart().await;
    let until = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while Instant::now() < until {
        let resp = stack
            .chat(&body("gpt-4o-mini", "after"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(r) = resp {
            if r.status() == 200 {
                let v: Value = r.json().await.unwrap();
                assert_eq!(
                    content(&v),
                    sy_mock_provider::reply_text("after", sy_mock_provider::DEFAULT_TOKENS, 0)
                );
                return;
            }
            last = Some(r.status());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no request succeeded within 20 s of the NATS restart (last status {last:?})");
}
