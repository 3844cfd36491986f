//! What hostile and careless clients tried (issue 24): each class refused with
//! a clean error in the surface's own format, no provider call, and the service
//! still answering afterwards; answered requests never run twice.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use sy_protocol::{ErrorCode, ReplyFrame, Subjects, UsageEvent};

use crate::batch;
use crate::stack::{KEY, OTHER_KEY, Stack, StackOptions, body, content};

/// A valid body of `path` with nested arrays where the surface takes free-form
/// JSON, `depth` levels deep in all.
fn deep_body(path: &str, depth: usize) -> Value {
    let with = |v: Value| match path {
        "/v1/messages" => json!({"model": "gpt-4o-mini", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {"p": v}}}]}),
        "/v1/responses" => json!({"model": "gpt-4o-mini", "input": "hi",
            "tools": [{"type": "function", "name": "f",
                "parameters": {"type": "object", "properties": {"p": v}}}]}),
        "/v1/embeddings" => json!({"model": "text-embedding-3-small", "input": "hi", "x": v}),
        "/v1/rerank" => json!({"model": "rerank-v3.5", "query": "q", "documents": ["a"], "x": v}),
        "/v1/images/generations" => json!({"model": "gpt-image-1", "prompt": "p", "x": v}),
        _ => {
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "x": v})
        }
    };
    let nested = |levels: usize| (0..levels).fold(json!(0), |v, _| json!([v]));
    let depth_of = |v: &Value| {
        sy_protocol::json::nesting_depth(&serde_json::to_vec(v).unwrap(), usize::MAX).unwrap()
    };
    // Levels around the free-form value.
    let around = depth_of(&with(nested(500))) - 500;
    let body = with(nested(depth - around));
    assert_eq!(depth_of(&body), depth);
    body
}

async fn post(stack: &Stack, path: &str, body: &Value) -> (u16, Value, Duration) {
    let started = Instant::now();
    let resp = stack
        .http
        .post(stack.url(path))
        .bearer_auth(KEY)
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (status, v, started.elapsed())
}

/// The surface's error type: OpenAI's `error.code`, Anthropic's `error.type`.
fn is_invalid_request(path: &str, v: &Value) -> bool {
    if path == "/v1/messages" {
        v["type"] == "error" && v["error"]["type"] == "invalid_request_error"
    } else {
        v["error"]["code"] == "invalid_request"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_deep_bodies_are_refused_at_once_on_every_surface() {
    let stack = Stack::start().await;
    let limit = sy_protocol::json::MAX_BODY_DEPTH;
    for path in [
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/responses",
        "/v1/embeddings",
        "/v1/rerank",
        "/v1/images/generations",
        "/v1/route/explain",
    ] {
        for depth in [limit + 1, 127, 128, 1000] {
            let before = stack.upstream_requests();
            let (status, v, took) = post(&stack, path, &deep_body(path, depth)).await;
            assert_eq!(status, 400, "{path} depth {depth}: {v}");
            assert!(is_invalid_request(path, &v), "{path} depth {depth}: {v}");
            assert!(
                took < Duration::from_secs(2),
                "{path} depth {depth} took {took:?}"
            );
            assert_eq!(
                stack.upstream_requests(),
                before,
                "{path} depth {depth} reached a provider"
            );
        }
    }
    // At the limit (and below), the body is read and answered: the worker can read it.
    for path in ["/v1/chat/completions", "/v1/messages", "/v1/responses"] {
        for depth in [limit - 1, limit] {
            let (status, v, _) = post(&stack, path, &deep_body(path, depth)).await;
            assert_eq!(status, 200, "{path} depth {depth}: {v}");
        }
    }
    still_answers(&stack).await;
}

/// The service answers a plain request after whatever came before.
async fn still_answers(stack: &Stack) {
    let resp = stack
        .chat(&body("gpt-4o-mini", "still here"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// An envelope the worker cannot parse (not one the ingress would send; a
/// bug or another publisher) is answered with an error, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_envelope_is_answered_with_an_error_not_dropped() {
    let stack = Stack::start().await;
    let nats = sy_test_support::nats().await;
    let subjects = Subjects::new(&stack.namespace);
    let request_id = uuid::Uuid::now_v7();
    let reply_to = format!("{}.test-reply.{}", stack.namespace, request_id.as_simple());
    let mut replies = nats.subscribe(reply_to.clone()).await.unwrap();
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let payload = format!(
        r#"{{"request_id":"{request_id}","attempt":1,"reply_to":"{reply_to}","key_id":"test","request":{deep}}}"#
    );
    let js = async_nats::jetstream::new(nats.clone());
    js.publish(subjects.request("openai", "gpt-4o-mini"), payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), replies.next())
        .await
        .expect("the worker answered nothing")
        .unwrap();
    let ReplyFrame::Final(f) = serde_json::from_slice(&msg.payload).unwrap() else {
        panic!("expected a final frame")
    };
    assert_eq!(f.error.unwrap().code, ErrorCode::Internal);
    assert_eq!(stack.mock.stats().requests, 0);
}

/// Issue 24, defect 1: a batch line nested deep enough to be unreadable
/// inside an envelope used to wedge its batch (and 32 of them every batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_deep_batch_line_fails_alone_and_every_batch_ends() {
    let stack = Stack::start().await;
    let deep = json!({"custom_id": "deep", "method": "POST", "url": "/v1/chat/completions",
        "body": deep_body("/v1/chat/completions", 127)})
    .to_string();
    let lines = [batch::line("ok", "gpt-4o-mini", "fine"), deep];
    let mut ids = Vec::new();
    for key in [KEY, KEY, KEY, OTHER_KEY] {
        let file: Value = batch::upload(&stack, key, lines.join("\n").into_bytes())
            .await
            .json()
            .await
            .unwrap();
        let r = batch::create(&stack, key, file["id"].as_str().unwrap()).await;
        assert_eq!(r.status(), 200);
        let b: Value = r.json().await.unwrap();
        ids.push((key, b["id"].as_str().unwrap().to_owned()));
    }
    for (key, id) in &ids {
        let b = batch::wait_end_as(&stack, key, id, Duration::from_secs(30)).await;
        assert_eq!(b["status"], "completed", "{b}");
        assert_eq!(b["request_counts"]["completed"], 1, "{b}");
        assert_eq!(b["request_counts"]["failed"], 1, "{b}");
    }
    // The error file names the deep line with a 400.
    let (_, id) = &ids[0];
    let b = batch::wait_end_as(&stack, KEY, id, Duration::from_secs(1)).await;
    let errors = batch::file_lines(&stack, b["error_file_id"].as_str()).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_id"], "deep");
    assert_eq!(errors[0]["response"]["status_code"], 400, "{}", errors[0]);
}

/// Issue 24, defect 2: a long model name in an override used to make a NATS
/// key past the server's control-line limit, which dropped the connection of
/// the whole process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_keys_are_bounded_and_only_for_configured_targets() {
    let stack = Stack::start().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Traffic meanwhile: not one request may fail.
    let traffic = {
        let (http, url, stop) = (
            stack.http.clone(),
            stack.url("/v1/chat/completions"),
            stop.clone(),
        );
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = http
                    .post(&url)
                    .bearer_auth(KEY)
                    .json(&body("gpt-4o-mini", "steady"))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    let force = |b: Value| {
        stack
            .http
            .put(stack.url("/v1/route/targets"))
            .bearer_auth(KEY)
            .json(&b)
            .send()
    };
    for model in [
        "m".repeat(2_100),
        "m".repeat(60_000),
        "not-configured".into(),
        "gpt-4o-mini\r\nPUB x 1".into(),
    ] {
        for _ in 0..3 {
            let r = force(json!({"provider": "openai", "model": model, "state": "off"}))
                .await
                .unwrap();
            assert_eq!(r.status(), 400);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "invalid_request", "{v}");
            assert_eq!(v["error"]["param"], "model", "{v}");
        }
    }
    // A configured target still works.
    let r = force(json!({"provider": "openai", "model": "gpt-4o-mini", "state": "auto"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = traffic.await.unwrap();
    assert!(ok > 0);
    assert_eq!(
        failed, 0,
        "{failed} requests failed while overrides were refused"
    );
}

/// Issue 24, defect 10: the mock read at most 2 MB, below the ingress's
/// limit, so valid large requests failed in the local stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_three_megabytes_reaches_the_provider_when_the_limit_allows_it() {
    let stack = Stack::start_with(StackOptions {
        max_body_bytes: 4 * 1024 * 1024,
        ..Default::default()
    })
    .await;
    let prompt = "word ".repeat(600_000);
    let resp = stack
        .chat(&body("gpt-4o-mini", &prompt))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(!content(&v).is_empty());
    assert_eq!(stack.mock.stats().requests, 1);
}

/// Issue 24, defect 3: a worker that answered and then lost its ack (a crash
/// here; a NATS reconnect in the report) must not call the provider again when
/// the message comes back, and the answered attempt's usage is not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_answered_request_is_acked_without_a_second_call() {
    let stack = Stack::start_with(StackOptions {
        split_workers: 1,
        ack_wait: "2s",
        ..Default::default()
    })
    .await;
    let nats = sy_test_support::nats().await;
    let js = async_nats::jetstream::new(nats.clone());
    let subjects = Subjects::new(&stack.namespace);
    // With the usage stream gone, the worker answers, marks the request done
    // and then keeps retrying its usage event without acking: kill it there.
    js.delete_stream(subjects.usage_stream()).await.unwrap();
    let prompt = "answered once";
    let resp = stack
        .chat(&body("gpt-4o-mini", prompt))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-switchyard-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.signal_worker(0, "-KILL");
    stack.wait_worker(0);
    // The next worker recreates the usage stream and gets the redelivery.
    stack.start_worker();
    let until = Instant::now() + Duration::from_secs(20);
    let event = loop {
        let found = match js.get_stream(subjects.usage_stream()).await {
            Ok(s) => s
                .get_last_raw_message_by_subject(&subjects.usage())
                .await
                .ok()
                .and_then(|m| serde_json::from_slice::<UsageEvent>(&m.payload).ok()),
            Err(_) => None,
        };
        if let Some(e) = found {
            break e;
        }
        assert!(
            Instant::now() < until,
            "the answered attempt's usage never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(event.request_id.to_string(), request_id);
    assert_eq!(event.status.as_str(), "ok");
    // The redelivered message was acked (nothing left to deliver) and the
    // provider was called once.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let info = js
            .get_stream(subjects.request_stream())
            .await
            .unwrap()
            .consumer_info(subjects.worker_consumer("openai"))
            .await
            .unwrap();
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the redelivery was never acked: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        stack.mock.calls_for(prompt),
        1,
        "the provider was called again"
    );
}

/// Issue 24, defect 3 as reported: NATS restarts while answers are being
/// acked under load; no answered request is run or billed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_while_acking_runs_and_bills_nothing_twice() {
    let mut nats = sy_test_support::NatsServer::start().await;
    let stack = Stack::start_with(StackOptions {
        nats_url: nats.url(),
        ack_wait: "2s",
        clickhouse: true,
        ..Default::default()
    })
    .await;
    let n = 40;
    let prompts: Vec<String> = (0..n)
        .map(|i| format!("restart {i} [[mock:ttft_ms={}]]", 700 + 5 * i / 2))
        .collect();
    let mut tasks = Vec::new();
    for p in &prompts {
        let req = stack
            .chat(&body("gpt-4o-mini", p))
            .timeout(Duration::from_secs(20));
        tasks.push(tokio::spawn(async move { req.send().await }));
    }
    // The answers arrive from 700 to 800 ms: kill NATS in the middle.
    tokio::time::sleep(Duration::from_millis(750)).await;
    nats.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    nats.restart().await;
    let mut answered = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        if let Ok(Ok(r)) = t.await
            && r.status() == 200
        {
            answered.push(i);
        }
    }
    // Redeliveries come after the ack wait; give them time.
    tokio::time::sleep(Duration::from_secs(8)).await;
    for &i in &answered {
        let bare = format!("restart {i}");
        assert_eq!(
            stack.mock.calls_for(&bare),
            1,
            "request {i} was answered and then run again"
        );
    }
    let c = stack.clickhouse.as_ref().unwrap();
    let client = sy_accounting::client(c);
    let dup: u64 = client
        .query(&format!(
            "SELECT count() FROM (SELECT request_id, countIf(status = 'ok') AS n FROM {}.requests FINAL GROUP BY request_id HAVING n > 1)",
            c.database
        ))
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(dup, 0, "requests with two ok rows");
    println!(
        "nats restart: {} of {n} answered, none run twice",
        answered.len()
    );
}

/// Issue 24, defects 6 and 12: a keyless body is never read (401, not a
/// plain-text 413), and no extractor answers in plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_json_and_keyless_bodies_are_not_read() {
    let stack = Stack::start().await;
    let big = vec![b'x'; 3 * 1024 * 1024];
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "a path that is not UTF-8",
            stack
                .http
                .get(stack.url("/v1/files/%ff%fe"))
                .bearer_auth(KEY),
            400,
        ),
        (
            "a batch id that is not UTF-8",
            stack
                .http
                .post(stack.url("/v1/batches/%ff/cancel"))
                .bearer_auth(KEY),
            400,
        ),
        (
            "a batch create that is not JSON",
            stack
                .http
                .post(stack.url("/v1/batches"))
                .bearer_auth(KEY)
                .header("content-type", "text/plain")
                .body("{}"),
            415,
        ),
        (
            "a batch create larger than the body limit",
            stack
                .http
                .post(stack.url("/v1/batches"))
                .bearer_auth(KEY)
                .header("content-type", "application/json")
                .body(big.clone()),
            413,
        ),
    ];
    for (name, req, status) in cases {
        let resp = req
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(resp.status().as_u16(), status, "{name}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("application/json"), "{name}: {ct}");
        let v: Value = resp.json().await.unwrap();
        assert!(v["error"]["message"].is_string(), "{name}: {v}");
    }
    // Keyless requests announcing 3 MB bodies, none of which is sent: the
    // answer comes without the server waiting for (or reading) a byte of it.
    let addr = stack.base.trim_start_matches("http://").to_owned();
    for (path, ct) in [
        ("/v1/batches", "application/json"),
        ("/v1/files", "multipart/form-data; boundary=x"),
        ("/v1/chat/completions", "application/json"),
        ("/v1/messages", "application/json"),
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\nContent-Length: 3145728\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{path}: the server waited for the keyless body"))
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(text.starts_with("HTTP/1.1 401"), "{path}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{path}: {text}"
        );
    }
    assert_eq!(stack.upstream_requests(), 0);
    still_answers(&stack).await;
}

/// Uploads `lines` as `key` and starts a batch; its id.
async fn submit_as(stack: &Stack, key: &str, lines: &[String]) -> String {
    let file: Value = batch::upload(stack, key, lines.join("\n").into_bytes())
        .await
        .json()
        .await
        .unwrap();
    let r = batch::create(stack, key, file["id"].as_str().unwrap()).await;
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    b["id"].as_str().unwrap().to_owned()
}

async fn batch_as(stack: &Stack, key: &str, id: &str) -> Value {
    batch::get(stack, key, &format!("/v1/batches/{id}"))
        .await
        .json()
        .await
        .unwrap()
}

/// Issue 24, defect 1: one key's batches cannot hold every dispatcher slot,
/// and a cancelled batch ends at once although its items are still running
/// (they are cancelled), so nothing waits on an item forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keys_batches_take_turns_and_a_cancel_ends_running_items_at_once() {
    let stack = Stack::start_with(StackOptions {
        batch_extra: "max_running_per_key = 1",
        ..StackOptions::default()
    })
    .await;
    let slow = |id: &str| batch::line(id, "gpt-4o-mini", "[[mock:ttft_ms=60000]] slow");
    let first = submit_as(&stack, KEY, &[slow("s0"), slow("s1")]).await;
    let second = submit_as(&stack, KEY, &[batch::line("q0", "gpt-4o-mini", "quick")]).await;
    let other = submit_as(
        &stack,
        OTHER_KEY,
        &[batch::line("o0", "gpt-4o-mini", "quick")],
    )
    .await;
    // The other key's batch runs while this key's second waits for its turn.
    let b = batch::wait_end_as(&stack, OTHER_KEY, &other, Duration::from_secs(15)).await;
    assert_eq!(b["status"], "completed", "{b}");
    let waiting = batch_as(&stack, KEY, &second).await;
    assert_eq!(
        waiting["status"], "validating",
        "one batch per key here: {waiting}"
    );
    // Both slow calls are running; cancel ends the batch within moments.
    let until = Instant::now() + Duration::from_secs(10);
    while stack.mock.stats().requests < 3 {
        assert!(Instant::now() < until, "{:?}", stack.mock.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = stack
        .http
        .post(stack.url(&format!("/v1/batches/{first}/cancel")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    let b = batch::wait_end(&stack, &first, Duration::from_secs(10)).await;
    assert_eq!(b["status"], "cancelled", "{b}");
    println!("cancelled with 2 items running in {:?}", started.elapsed());
    let errors = batch::file_lines(&stack, b["error_file_id"].as_str()).await;
    assert_eq!(errors.len(), 2);
    assert!(
        errors
            .iter()
            .all(|e| e["error"]["code"] == "batch_cancelled"),
        "{errors:?}"
    );
    // The running calls were dropped, not left to run for nobody.
    let until = Instant::now() + Duration::from_secs(5);
    while stack.mock.stats().cancelled < 2 {
        assert!(Instant::now() < until, "{:?}", stack.mock.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The key's turn came back: its waiting batch runs.
    let b = batch::wait_end(&stack, &second, Duration::from_secs(20)).await;
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(b["request_counts"]["completed"], 1);
    still_answers(&stack).await;
}

/// Issue 24, defect 1: an item its worker died on until its deliveries ran out
/// used to stay unanswered, holding its batch; now it gets an error result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_whose_deliveries_run_out_gets_an_error_and_its_batch_ends() {
    let stack = Stack::start_with(StackOptions {
        split_workers: 1,
        ack_wait: "1s",
        batch_extra: "max_deliver = 1",
        ..StackOptions::default()
    })
    .await;
    let lines = [
        batch::line("fine", "gpt-4o-mini", "quick"),
        batch::line("doomed", "gpt-4o-mini", "[[mock:ttft_ms=60000]] slow"),
    ];
    let id = submit_as(&stack, KEY, &lines).await;
    let until = Instant::now() + Duration::from_secs(10);
    while stack.mock.stats().requests < 2 || stack.mock.stats().completed < 1 {
        assert!(Instant::now() < until, "{:?}", stack.mock.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The worker dies holding the slow item; with one delivery allowed,
    // JetStream gives up on it instead of redelivering.
    stack.signal_worker(0, "-KILL");
    stack.wait_worker(0);
    stack.start_worker();
    let b = batch::wait_end(&stack, &id, Duration::from_secs(20)).await;
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(
        (
            b["request_counts"]["completed"].clone(),
            b["request_counts"]["failed"].clone()
        ),
        (json!(1), json!(1)),
        "{b}"
    );
    let errors = batch::file_lines(&stack, b["error_file_id"].as_str()).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_id"], "doomed");
    assert_eq!(errors[0]["response"]["status_code"], 500, "{}", errors[0]);
    let message = errors[0]["response"]["body"]["error"]["message"]
        .as_str()
        .unwrap_or("");
    assert!(message.contains("deliveries"), "{}", errors[0]);
    assert_eq!(
        stack.mock.stats().requests,
        2,
        "the doomed item was not run again"
    );
}

/// Uploads a one-line batch input as `KEY`; the file's id.
async fn one_line_file(stack: &Stack) -> String {
    let file: Value = batch::upload(
        stack,
        KEY,
        batch::line("a", "gpt-4o-mini", "hi").into_bytes(),
    )
    .await
    .json()
    .await
    .unwrap();
    file["id"].as_str().unwrap().to_owned()
}

/// `POST /v1/batches` of `file_id` with `webhook_url`.
async fn create_with_webhook(stack: &Stack, file_id: &str, url: &str) -> reqwest::Response {
    stack
        .http
        .post(stack.url("/v1/batches"))
        .bearer_auth(KEY)
        .json(
            &json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "webhook_url": url}),
        )
        .send()
        .await
        .unwrap()
}

/// The batch object once the batch ended and its webhook is no longer pending.
async fn webhook_outcome(stack: &Stack, id: &str) -> Value {
    batch::wait_end(stack, id, Duration::from_secs(20)).await;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let b = batch_as(stack, KEY, id).await;
        if b["webhook"]["status"] != "pending" {
            return b;
        }
        assert!(Instant::now() < until, "{b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A name of this machine that resolves only to internal addresses (its host
/// name: 127.0.x.1 or a private address on any usual setup).
async fn internal_host_name() -> String {
    let name = String::from_utf8(
        std::process::Command::new("hostname")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let addrs: Vec<_> = tokio::net::lookup_host((name.as_str(), 80))
        .await
        .unwrap()
        .collect();
    assert!(
        !addrs.is_empty()
            && addrs.iter().all(|a| match a.ip() {
                std::net::IpAddr::V4(v4) =>
                    v4.is_loopback() || v4.is_private() || v4.is_link_local(),
                std::net::IpAddr::V6(v6) =>
                    v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
            }),
        "the test needs the host name {name} to resolve internally: {addrs:?}"
    );
    name
}

/// Issue 24, defect 5: webhooks were a way into the server's own network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_reach_only_public_destinations() {
    let stack = Stack::start().await;
    let mock = stack.mock.addr();
    let file_id = one_line_file(&stack).await;
    let long = format!("https://example.com/{}", "a".repeat(3000));
    let refused = [
        format!("http://{mock}/mock/reset"),
        format!("http://localhost:{}/mock/reset", mock.port()),
        format!("http://2130706433:{}/mock/reset", mock.port()),
        format!("http://[::1]:{}/", mock.port()),
        format!("http://[::ffff:127.0.0.1]:{}/", mock.port()),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://10.0.0.1/hook".into(),
        "http://192.168.1.1/hook".into(),
        "http://user:secret@example.com/hook".into(),
        "gopher://example.com/".into(),
        long,
    ];
    for url in &refused {
        let r = create_with_webhook(&stack, &file_id, url).await;
        assert_eq!(r.status(), 400, "{url}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["param"], "webhook_url", "{url}: {v}");
        assert!(
            v.to_string().len() < 1024,
            "the URL is not echoed whole: {v}"
        );
    }
    // A name is checked once resolved: this machine's own name is refused
    // when the batch ends, and the outcome is on the batch object.
    let host = internal_host_name().await;
    let url = format!("http://{host}:{}/mock/reset", mock.port());
    let r = create_with_webhook(&stack, &file_id, &url).await;
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["webhook"]["status"], "pending", "{b}");
    let id = b["id"].as_str().unwrap();
    let b = webhook_outcome(&stack, id).await;
    assert_eq!(b["webhook"]["status"], "refused", "{b}");
    assert_eq!(b["webhook"]["attempts"], 0, "{b}");
    assert!(
        b["webhook"]["last_error"]
            .as_str()
            .unwrap()
            .contains("address"),
        "{b}"
    );
    assert_eq!(stack.mock.stats().requests, 1, "the mock was not reset");
    still_answers(&stack).await;
}

/// A one-connection server that redirects every request to `location`.
async fn redirector(location: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 65536];
            let _ = sock.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = sock.write_all(answer.as_bytes()).await;
        }
    });
    url
}

/// Issue 24, defect 5: a webhook that redirects is not followed (a redirect
/// could point anywhere), and the batch says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_redirect_is_not_followed() {
    // Loopback allowed for the redirecting receiver, as an operator would
    // allow an internal receiver.
    let stack = Stack::start_with(StackOptions {
        batch_extra: "webhook_allow = [\"127.0.0.1\"]",
        ..StackOptions::default()
    })
    .await;
    let hook = redirector(format!("http://{}/mock/reset", stack.mock.addr())).await;
    let file_id = one_line_file(&stack).await;
    let r = create_with_webhook(&stack, &file_id, &hook).await;
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = webhook_outcome(&stack, &id).await;
    assert_eq!(b["webhook"]["status"], "failed", "{b}");
    assert_eq!(b["webhook"]["attempts"], 1, "a redirect is final: {b}");
    assert!(
        b["webhook"]["last_error"]
            .as_str()
            .unwrap()
            .contains("redirect"),
        "{b}"
    );
    assert_eq!(
        stack.mock.stats().requests,
        1,
        "the redirect target was never called"
    );
}

/// Sends `body` to `path` with raw `headers`; the status and the JSON body.
async fn send_raw(
    stack: &Stack,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = stack
        .http
        .post(stack.url(path))
        .bearer_auth(KEY)
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Issue 24, defect 12: `curl -d` labels JSON as a form and got a 415 although
/// a missing Content-Type was accepted "because curl omits it"; compressed
/// bodies were read as if they were plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_style_bodies_work_and_compressed_ones_are_refused() {
    let stack = Stack::start().await;
    let chat = serde_json::to_vec(&body("gpt-4o-mini", "typed as curl -d sends it")).unwrap();
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let (status, v) = send_raw(&stack, "/v1/chat/completions", &form, chat.clone()).await;
    assert_eq!(status, 200, "{v}");
    let messages = serde_json::to_vec(&json!({"model": "gpt-4o-mini", "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}]}))
    .unwrap();
    let (status, v) = send_raw(&stack, "/v1/messages", &form, messages.clone()).await;
    assert_eq!(status, 200, "{v}");
    let calls = stack.mock.stats().requests;
    assert_eq!(calls, 2);
    // A real form is still not JSON; other types are refused.
    let (status, v) = send_raw(
        &stack,
        "/v1/chat/completions",
        &form,
        b"model=gpt-4o-mini&x=1".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_request", "{v}");
    let (status, v) = send_raw(
        &stack,
        "/v1/chat/completions",
        &[("content-type", "text/plain")],
        chat.clone(),
    )
    .await;
    assert_eq!(status, 415, "{v}");
    // Compressed bodies: 415 in each surface's format, whatever the bytes.
    let gzip = [
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ];
    for (path, payload) in [
        ("/v1/chat/completions", chat.clone()),
        (
            "/v1/responses",
            serde_json::to_vec(&json!({"model": "gpt-4o-mini", "input": "hi"})).unwrap(),
        ),
        (
            "/v1/embeddings",
            serde_json::to_vec(&json!({"model": "text-embedding-3-small", "input": "hi"})).unwrap(),
        ),
        ("/v1/batches", b"{}".to_vec()),
    ] {
        let (status, v) = send_raw(&stack, path, &gzip, payload).await;
        assert_eq!(status, 415, "{path}: {v}");
        assert_eq!(v["error"]["code"], "unsupported_media_type", "{path}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("gzip"),
            "{v}"
        );
    }
    let (status, v) = send_raw(&stack, "/v1/messages", &gzip, messages).await;
    assert_eq!(status, 415, "{v}");
    assert_eq!(v["type"], "error", "Anthropic's format: {v}");
    let upload = stack
        .http
        .post(stack.url("/v1/files"))
        .bearer_auth(KEY)
        .header("content-encoding", "br")
        .multipart(
            reqwest::multipart::Form::new()
                .text("purpose", "batch")
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("a.jsonl"),
                ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 415);
    assert_eq!(
        stack.mock.stats().requests,
        calls,
        "nothing refused reached a provider"
    );
    // Saying "identity" is saying nothing.
    let identity = [
        ("content-type", "application/json"),
        ("content-encoding", "identity"),
    ];
    let (status, v) = send_raw(&stack, "/v1/chat/completions", &identity, chat).await;
    assert_eq!(status, 200, "{v}");
}

/// Issue 24, defect 9: wrong types, trailing data and duplicate keys are
/// refused the same way on every surface, in its own format, with no provider
/// call (they used to be dropped or last-wins on Messages and Responses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_trailing_data_and_duplicate_keys_are_refused_on_every_surface() {
    let stack = Stack::start().await;
    let msg = || json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let resp = || json!({"model": "gpt-4o-mini", "input": "hi"});
    let with = |mut v: Value, k: &str, x: Value| {
        v[k] = x;
        v
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/v1/messages",
            with(msg(), "temperature", json!("abc")),
            "temperature",
        ),
        ("/v1/messages", with(msg(), "top_k", json!(-1)), "top_k"),
        (
            "/v1/messages",
            with(msg(), "stop_sequences", json!("x")),
            "stop_sequences",
        ),
        (
            "/v1/messages",
            with(msg(), "stream", json!("yes")),
            "stream",
        ),
        (
            "/v1/messages",
            with(msg(), "metadata", json!({"user_id": 5})),
            "metadata.user_id",
        ),
        (
            "/v1/messages",
            with(
                msg(),
                "messages",
                json!([{"role": "user", "content": [{"type": "text"}]}]),
            ),
            "messages.0.content.0.text",
        ),
        (
            "/v1/messages",
            with(
                msg(),
                "messages",
                json!([{"role": "user", "content": [{"type": "text", "text": 42}]}]),
            ),
            "messages.0.content.0.text",
        ),
        (
            "/v1/messages",
            with(
                msg(),
                "messages",
                json!([
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]},
                    {"role": "user", "content": "ok"},
                ]),
            ),
            "messages.1.content.0.id",
        ),
        (
            "/v1/messages",
            with(
                msg(),
                "tools",
                json!([{"name": "f", "description": 5, "input_schema": {"type": "object"}}]),
            ),
            "tools.0.description",
        ),
        (
            "/v1/responses",
            with(
                resp(),
                "input",
                json!([{"type": "function_call", "name": "f", "arguments": "{}"}]),
            ),
            "call_id",
        ),
        (
            "/v1/responses",
            with(resp(), "instructions", json!(5)),
            "instructions",
        ),
        (
            "/v1/responses",
            with(resp(), "temperature", json!("hot")),
            "temperature",
        ),
        ("/v1/responses", with(resp(), "stream", json!(1)), "stream"),
        (
            "/v1/responses",
            with(
                resp(),
                "input",
                json!([{"role": "user", "content": [{"type": "input_text", "text": 42}]}]),
            ),
            "text",
        ),
        (
            "/v1/chat/completions",
            with(body("gpt-4o-mini", "hi"), "tool_choice", json!(5)),
            "tool_choice",
        ),
        (
            "/v1/rerank",
            json!({"model": "rerank-v3.5", "query": ["q"], "documents": ["a"]}),
            "query",
        ),
        (
            "/v1/images/generations",
            json!({"model": "gpt-image-1", "prompt": "p", "quality": 5}),
            "quality",
        ),
    ];
    for (path, b, param) in &cases {
        let (status, v, _) = post(&stack, path, b).await;
        assert_eq!(status, 400, "{path} {b}: {v}");
        assert!(is_invalid_request(path, &v), "{path}: {v}");
        let said = if *path == "/v1/messages" {
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        } else {
            v["error"]["param"].as_str().unwrap_or_default().to_owned()
        };
        assert!(said.contains(param), "{path} {b}: {v}");
    }
    // Trailing data and duplicate keys, as raw bodies.
    let raw: Vec<(&str, String)> = vec![
        (
            "/v1/embeddings",
            r#"{"model": "text-embedding-3-small", "input": "hi"} trailing"#.into(),
        ),
        (
            "/v1/messages",
            r#"{"model": "gpt-4o-mini", "max_tokens": 5, "max_tokens": 6, "messages": [{"role": "user", "content": "hi"}]}"#.into(),
        ),
        (
            "/v1/responses",
            r#"{"model": "gpt-4o-mini", "input": "hi", "input": "again"}"#.into(),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "gpt-4o-mini", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}"#.into(),
        ),
        (
            "/v1/rerank",
            r#"{"model": "rerank-v3.5", "query": "q", "query": "r", "documents": ["a"]}"#.into(),
        ),
        (
            "/v1/images/generations",
            r#"{"model": "gpt-image-1", "prompt": "p"} [1]"#.into(),
        ),
    ];
    for (path, text) in &raw {
        let r = stack
            .http
            .post(stack.url(path))
            .bearer_auth(KEY)
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(text.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}: {text}");
        let v: Value = r.json().await.unwrap();
        assert!(is_invalid_request(path, &v), "{path}: {v}");
    }
    assert_eq!(
        stack.upstream_requests(),
        0,
        "a refused body reached a provider"
    );
    still_answers(&stack).await;
}
