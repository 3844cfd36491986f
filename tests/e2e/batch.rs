//! Batch jobs end to end: the Files and Batches API, the native `<ns>.batch.submit`
//! path with its announcement and webhook, ownership, cancel, malformed input,
//! and kill -9 of a worker and of the dispatcher mid-batch.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::stack::{KEY, OTHER_KEY, Stack, StackOptions};

const CHAT: &str = "/v1/chat/completions";

pub(crate) fn line(id: &str, model: &str, prompt: &str) -> String {
    json!({
        "custom_id": id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": model, "messages": [{"role": "user", "content": prompt}]},
    })
    .to_string()
}

pub(crate) async fn upload(stack: &Stack, key: &str, data: Vec<u8>) -> reqwest::Response {
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(data).file_name("in.jsonl"),
        );
    stack
        .http
        .post(stack.url("/v1/files"))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

pub(crate) async fn create(stack: &Stack, key: &str, file_id: &str) -> reqwest::Response {
    stack
        .http
        .post(stack.url("/v1/batches"))
        .bearer_auth(key)
        .json(&json!({"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}))
        .send()
        .await
        .unwrap()
}

/// Uploads `lines` and starts a batch; the batch object.
async fn submit(stack: &Stack, lines: &[String]) -> Value {
    let file: Value = upload(stack, KEY, lines.join("\n").into_bytes())
        .await
        .json()
        .await
        .unwrap();
    let r = create(stack, KEY, file["id"].as_str().unwrap()).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

pub(crate) async fn get(stack: &Stack, key: &str, path: &str) -> reqwest::Response {
    stack
        .http
        .get(stack.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

async fn batch(stack: &Stack, id: &str) -> Value {
    get(stack, KEY, &format!("/v1/batches/{id}"))
        .await
        .json()
        .await
        .unwrap()
}

/// `n` lines `<prefix><i>` whose answers take `ttft_ms` each.
fn slow_lines(prefix: &str, n: usize, ttft_ms: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            line(
                &format!("{prefix}{i}"),
                "gpt-4o-mini",
                &format!("[[mock:ttft_ms={ttft_ms}]] item {i}"),
            )
        })
        .collect()
}

/// Polls until at least `min` items of the batch were answered; the count.
async fn wait_completed(stack: &Stack, id: &str, min: u64, within: Duration) -> u64 {
    let until = Instant::now() + within;
    loop {
        let done = batch(stack, id).await["request_counts"]["completed"]
            .as_u64()
            .unwrap_or(0);
        if done >= min {
            return done;
        }
        assert!(
            Instant::now() < until,
            "batch {id}: {done} of {min} answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until the batch reaches a final status.
pub(crate) async fn wait_end(stack: &Stack, id: &str, within: Duration) -> Value {
    wait_end_as(stack, KEY, id, within).await
}

/// [`wait_end`] for a batch of `key`.
pub(crate) async fn wait_end_as(stack: &Stack, key: &str, id: &str, within: Duration) -> Value {
    let until = Instant::now() + within;
    loop {
        let b: Value = get(stack, key, &format!("/v1/batches/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if matches!(
            b["status"].as_str(),
            Some("completed" | "failed" | "cancelled" | "expired")
        ) {
            return b;
        }
        assert!(Instant::now() < until, "batch {id} did not end: {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A file's lines as JSON.
pub(crate) async fn file_lines(stack: &Stack, id: Option<&str>) -> Vec<Value> {
    let Some(id) = id else { return Vec::new() };
    let text = get(stack, KEY, &format!("/v1/files/{id}/content"))
        .await
        .text()
        .await
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn custom_ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Rows of ClickHouse for a batch once `n` ok rows arrived: (ok rows, distinct
/// ok request ids, input+output tokens, billed USD, cost USD).
async fn batch_rows(stack: &Stack, batch_id: &str, n: u64) -> (u64, u64, u64, f64, f64) {
    let ch = stack.clickhouse.as_ref().unwrap();
    let client = sy_accounting::client(ch);
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let row: (u64, u64, u64, String, String) = client
            .query(&format!(
                "SELECT countIf(status = 'ok'), uniqExactIf(request_id, status = 'ok'), \
                 toUInt64(sum(input_tokens + output_tokens)), \
                 toString(sum(assumeNotNull(billed))), toString(sum(assumeNotNull(cost))) \
                 FROM {}.requests FINAL WHERE batch_id = '{batch_id}'",
                ch.database
            ))
            .fetch_one()
            .await
            .unwrap();
        if row.0 >= n || Instant::now() > until {
            return (
                row.0,
                row.1,
                row.2,
                row.3.parse().unwrap(),
                row.4.parse().unwrap(),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_batch_answers_every_item_once_in_input_order_with_failures_in_the_error_file() {
    let stack = Stack::start_with(StackOptions {
        clickhouse: true,
        ..StackOptions::default()
    })
    .await;
    // 30 lines: every 7th fails on every target; every 5th fails on openai
    // only and is answered by the chain's next target.
    let lines: Vec<String> = (0..30)
        .map(|i| {
            let directive = if i % 7 == 3 {
                "[[mock:status=500]] "
            } else if i % 5 == 1 {
                "[[mock:status=500,only=openai]] "
            } else {
                ""
            };
            line(
                &format!("req-{i}"),
                "chain",
                &format!("{directive}item {i}"),
            )
        })
        .collect();
    let created = submit(&stack, &lines).await;
    assert_eq!(created["object"], "batch");
    assert_eq!(created["status"], "validating");
    assert_eq!(created["request_counts"]["total"], 30);
    let id = created["id"].as_str().unwrap();
    let done = wait_end(&stack, id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let failing: Vec<usize> = (0..30).filter(|i| i % 7 == 3).collect();
    assert_eq!(done["request_counts"]["failed"], failing.len());
    assert_eq!(done["request_counts"]["completed"], 30 - failing.len());
    for stamp in [
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "expires_at",
    ] {
        assert!(done[stamp].as_u64().is_some(), "{stamp} in {done}");
    }
    let out = file_lines(&stack, done["output_file_id"].as_str()).await;
    let err = file_lines(&stack, done["error_file_id"].as_str()).await;
    let expect_out: Vec<String> = (0..30)
        .filter(|i| !failing.contains(i))
        .map(|i| format!("req-{i}"))
        .collect();
    let expect_err: Vec<String> = failing.iter().map(|i| format!("req-{i}")).collect();
    assert_eq!(
        custom_ids(&out),
        expect_out,
        "output in input order, once each"
    );
    assert_eq!(custom_ids(&err), expect_err);
    let mut usage_sum = 0;
    for l in &out {
        assert_eq!(l["response"]["status_code"], 200);
        assert!(l["id"].as_str().unwrap().starts_with("batch_req_"));
        let body = &l["response"]["body"];
        assert_eq!(body["object"], "chat.completion");
        assert!(
            !body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .is_empty()
        );
        usage_sum += body["usage"]["total_tokens"].as_u64().unwrap();
        let i: usize = l["custom_id"].as_str().unwrap()[4..].parse().unwrap();
        if i % 5 == 1 {
            // Failed on openai: answered by the chain's next target.
            assert_eq!(body["model"], "claude-sonnet-4-5", "{l}");
        } else {
            // The first target, unless three of the failing items ended in a
            // row first and took it out for its cool-down ([health]
            // failure_threshold = 3): then the next target answers.
            assert!(
                ["gpt-4o-mini", "claude-sonnet-4-5"].contains(&body["model"].as_str().unwrap()),
                "{l}"
            );
        }
    }
    for l in &err {
        assert_eq!(l["response"]["status_code"], 502, "{l}");
        let message = l["response"]["body"]["error"]["message"].as_str().unwrap();
        assert!(message.contains("500"), "the provider's error: {message}");
    }
    // Accounting: one ok row per answered item, tokens equal to the output's
    // usage, billed at the batch multiplier (0.5) on top of the 20 % markup.
    let (ok_rows, distinct, tokens, billed, cost) =
        batch_rows(&stack, id, expect_out.len() as u64).await;
    assert_eq!(
        (ok_rows, distinct),
        (expect_out.len() as u64, expect_out.len() as u64)
    );
    assert_eq!(tokens, usage_sum);
    assert!(cost > 0.0);
    let expected = cost * 1.2 * 0.5;
    assert!(
        (billed - expected).abs() <= 2e-9 * ok_rows as f64,
        "billed {billed} vs cost {cost} × 1.2 × 0.5"
    );
    // /metrics counts the batch and its items by outcome.
    let metrics = stack.metrics().await;
    for series in [
        "switchyard_batches_total{status=\"completed\"} 1\n".to_owned(),
        format!(
            "switchyard_batch_items_total{{outcome=\"completed\"}} {}\n",
            expect_out.len()
        ),
        format!(
            "switchyard_batch_items_total{{outcome=\"failed\"}} {}\n",
            err.len()
        ),
        // The job ended: nothing of it is left running or pending.
        "switchyard_batches_running 0\n".to_owned(),
        "switchyard_batch_items_pending 0\n".to_owned(),
    ] {
        assert!(metrics.contains(&series), "{series}{metrics}");
    }
    // Every usage event is in ClickHouse: the accounting consumer, read
    // every 5 s, holds none.
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = stack.metrics().await;
        if metrics.contains("switchyard_accounting_pending 0\n") {
            break;
        }
        assert!(Instant::now() < until, "{metrics}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Listed for its owner, newest first.
    let list: Value = get(&stack, KEY, "/v1/batches?limit=5")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["id"], id);
}

#[tokio::test]
async fn malformed_input_is_refused_naming_the_line_and_nothing_runs() {
    let stack = Stack::start().await;
    let good = line("a", "gpt-4o-mini", "hi");
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{good}\nthis is not json\n"),
            "Line 2 is not a JSON object",
        ),
        (
            format!("{good}\n{}", good.replace("\"custom_id\":\"a\",", "")),
            "Line 2 has no custom_id",
        ),
        (
            format!("{good}\n{good}"),
            "custom_id \"a\" was used before, on line 1",
        ),
        (
            good.replace(CHAT, "/v1/embeddings"),
            "does not match the batch's endpoint",
        ),
        (String::new(), "no requests"),
    ];
    for (text, expect) in cases {
        let file: Value = upload(&stack, KEY, text.into_bytes())
            .await
            .json()
            .await
            .unwrap();
        let r = create(&stack, KEY, file["id"].as_str().unwrap()).await;
        assert_eq!(r.status(), 400, "{expect}");
        let body: Value = r.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(expect), "{message} should say {expect}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    // Over the size limit (2,000,000 bytes in the test stack): 413 at upload.
    let big = vec![b'x'; 2_100_000];
    let r = upload(&stack, KEY, big).await;
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2000000")
    );
    // Too many lines (2,000 in the test stack).
    let many: Vec<String> = (0..2001)
        .map(|i| line(&format!("r{i}"), "gpt-4o-mini", "hi"))
        .collect();
    let file: Value = upload(&stack, KEY, many.join("\n").into_bytes())
        .await
        .json()
        .await
        .unwrap();
    let r = create(&stack, KEY, file["id"].as_str().unwrap()).await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than 2000")
    );
    // Wrong endpoint and window.
    let file: Value = upload(&stack, KEY, good.clone().into_bytes())
        .await
        .json()
        .await
        .unwrap();
    let fid = file["id"].as_str().unwrap();
    for (body, param) in [
        (
            json!({"input_file_id": fid, "endpoint": "/v1/completions", "completion_window": "24h"}),
            "endpoint",
        ),
        (
            json!({"input_file_id": fid, "endpoint": CHAT, "completion_window": "1h"}),
            "completion_window",
        ),
    ] {
        let r = stack
            .http
            .post(stack.url("/v1/batches"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["param"], param);
    }
    // A purpose other than batch.
    let form = reqwest::multipart::Form::new()
        .text("purpose", "fine-tune")
        .part(
            "file",
            reqwest::multipart::Part::bytes(good.into_bytes()).file_name("x.jsonl"),
        );
    let r = stack
        .http
        .post(stack.url("/v1/files"))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // No batch was created and no provider was called.
    let list: Value = get(&stack, KEY, "/v1/batches").await.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    assert_eq!(stack.mock.stats().requests, 0);
}

#[tokio::test]
async fn another_key_cannot_see_cancel_or_download_a_batch() {
    let stack = Stack::start().await;
    let b = submit(&stack, &[line("a", "gpt-4o-mini", "hi")]).await;
    let id = b["id"].as_str().unwrap();
    let done = wait_end(&stack, id, Duration::from_secs(30)).await;
    let out = done["output_file_id"].as_str().unwrap();
    let input = done["input_file_id"].as_str().unwrap();
    for path in [
        format!("/v1/batches/{id}"),
        format!("/v1/files/{out}"),
        format!("/v1/files/{out}/content"),
        format!("/v1/files/{input}/content"),
    ] {
        let r = get(&stack, OTHER_KEY, &path).await;
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(get(&stack, KEY, &path).await.status(), 200, "{path}");
    }
    let r = stack
        .http
        .post(stack.url(&format!("/v1/batches/{id}/cancel")))
        .bearer_auth(OTHER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let list: Value = get(&stack, OTHER_KEY, "/v1/batches")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    let files: Value = get(&stack, OTHER_KEY, "/v1/files")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(files["data"].as_array().unwrap().len(), 0);
    // And the other key cannot start a batch from this key's file.
    let r = create(&stack, OTHER_KEY, input).await;
    assert_eq!(r.status(), 404);
    // A completed batch cannot be cancelled.
    let r = stack
        .http
        .post(stack.url(&format!("/v1/batches/{id}/cancel")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
}

#[tokio::test]
async fn cancel_stops_dispatching_cancels_items_in_flight_and_writes_partial_files() {
    let stack = Stack::start_with(StackOptions {
        batch_window: 4,
        ..StackOptions::default()
    })
    .await;
    let n = 120;
    let lines = slow_lines("c", n, 150);
    let b = submit(&stack, &lines).await;
    let id = b["id"].as_str().unwrap();
    // Let some items finish first.
    wait_completed(&stack, id, 8, Duration::from_secs(20)).await;
    // The running job's items not ended yet show in /metrics (each tick).
    let pending = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("switchyard_batch_items_pending "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let m = stack.metrics().await;
        if let Some(p) = pending(&m).filter(|&p| p > 0) {
            assert!(p <= n as u64 - 8, "{p} pending of {n} with 8 done");
            break;
        }
        assert!(Instant::now() < until, "no pending items in /metrics:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = stack
        .http
        .post(stack.url(&format!("/v1/batches/{id}/cancel")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["status"], "cancelling");
    assert!(c["cancelling_at"].as_u64().is_some());
    let done = wait_end(&stack, id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "cancelled");
    // Ended, it gives its count back (the job's guard, however it ends).
    let until = Instant::now() + Duration::from_secs(5);
    while pending(&stack.metrics().await) != Some(0) {
        assert!(
            Instant::now() < until,
            "the cancelled job's items still pending"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let completed = done["request_counts"]["completed"].as_u64().unwrap();
    assert!(completed >= 8 && completed < n as u64 / 2, "{done}");
    let out = file_lines(&stack, done["output_file_id"].as_str()).await;
    let err = file_lines(&stack, done["error_file_id"].as_str()).await;
    assert_eq!(out.len() as u64, completed);
    // Every item is in exactly one file; those never run say so.
    let mut all = custom_ids(&out);
    all.extend(custom_ids(&err));
    all.sort();
    let mut expect: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    expect.sort();
    assert_eq!(all, expect);
    assert!(
        err.iter()
            .all(|l| l["error"]["code"] == "batch_cancelled" && l["response"].is_null())
    );
    // Dispatching stopped: the provider saw the answered items plus at most a
    // window of items that were already queued.
    let requests = stack.mock.stats().requests;
    assert!(
        requests <= completed + 4,
        "{requests} calls for {completed} answers"
    );
}

/// A one-request HTTP server that records what it received and answers 200.
async fn webhook_receiver() -> (
    String,
    tokio::sync::mpsc::Receiver<(HashMap<String, String>, Vec<u8>)>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (headers, body) = loop {
                let n = sock.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break (HashMap::new(), Vec::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let headers: HashMap<String, String> = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break (headers, buf[end + 4..end + 4 + len].to_vec());
                }
            };
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
            let _ = tx.send((headers, body)).await;
        }
    });
    (url, rx)
}

#[tokio::test]
async fn a_job_published_on_the_bus_runs_and_is_announced_and_signed_to_its_webhook() {
    use hmac::Mac;
    // The receiver listens on loopback, which webhooks reach only when allowed.
    let stack = Stack::start_with(StackOptions {
        batch_extra: "webhook_allow = [\"127.0.0.1\"]",
        ..StackOptions::default()
    })
    .await;
    let (hook, mut hooks) = webhook_receiver().await;
    let client = async_nats::connect(sy_test_support::nats_url())
        .await
        .unwrap();
    let ns = &stack.namespace;
    let mut done_sub = client
        .subscribe(format!("{ns}.batch.done.*"))
        .await
        .unwrap();
    let requests: Vec<Value> = (0..5)
        .map(|i| {
            serde_json::from_str(&line(
                &format!("n{i}"),
                "gpt-4o-mini",
                &format!("native {i}"),
            ))
            .unwrap()
        })
        .collect();
    let job = json!({
        "id": "batch_native1",
        "key_id": "test",
        "endpoint": CHAT,
        "requests": requests,
        "metadata": {"team": "support"},
        "webhook_url": hook,
    });
    let js = async_nats::jetstream::new(client.clone());
    let msg = submit_native(&js, ns, &job, &mut done_sub).await;
    assert_eq!(
        msg.subject.as_str(),
        format!("{ns}.batch.done.batch_native1")
    );
    let announced: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(announced["batch"]["status"], "completed");
    assert_eq!(announced["batch"]["request_counts"]["completed"], 5);
    // The owner reads it over HTTP like any batch; progress is in the KV bucket.
    let b = batch(&stack, "batch_native1").await;
    assert_eq!(b["metadata"]["team"], "support");
    let out = file_lines(&stack, b["output_file_id"].as_str()).await;
    assert_eq!(custom_ids(&out), ["n0", "n1", "n2", "n3", "n4"]);
    let kv = js
        .get_key_value(sy_protocol::Subjects::new(ns).batches_bucket())
        .await
        .unwrap();
    let record: Value =
        serde_json::from_slice(&kv.get("batch_native1").await.unwrap().unwrap()).unwrap();
    assert_eq!(record["batch"]["status"], "completed");
    assert_eq!(record["key_id"], "test");
    // The webhook: signed with the configured secret over "<timestamp>.<body>".
    let (headers, body) = tokio::time::timeout(Duration::from_secs(10), hooks.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(headers["x-switchyard-event"], "batch.completed");
    let ts = &headers["x-switchyard-timestamp"];
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"whsec-test").unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&body);
    let expect: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        headers["x-switchyard-signature"],
        format!("sha256={expect}")
    );
    let payload: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(payload["data"]["id"], "batch_native1");
    // The batch object says it was delivered.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let b = batch(&stack, "batch_native1").await;
        if b["webhook"]["status"] == "delivered" {
            assert_eq!(b["webhook"]["attempts"], 1, "{b}");
            break;
        }
        assert!(Instant::now() < until, "{b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A bad native job ends `failed`, with the reason, and is announced too.
    let bad = json!({"id": "batch_native2", "key_id": "nobody", "endpoint": CHAT, "requests": [requests[0]]});
    let msg = submit_native(&js, ns, &bad, &mut done_sub).await;
    let failed: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(failed["batch"]["status"], "failed");
    assert!(
        failed["batch"]["errors"]["data"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nobody")
    );
}

#[tokio::test]
async fn killing_a_worker_and_the_dispatcher_mid_batch_loses_and_repeats_nothing() {
    let stack = Stack::start_with(StackOptions {
        clickhouse: true,
        split_workers: 1,
        split_dispatcher: true,
        batch_window: 8,
        ..StackOptions::default()
    })
    .await;
    let n = 200;
    let lines = slow_lines("k", n as usize, 60);
    let b = submit(&stack, &lines).await;
    let id = b["id"].as_str().unwrap();
    wait_completed(&stack, id, 30, Duration::from_secs(30)).await;
    // kill -9 the worker with items in flight; a new one takes over.
    stack.signal_worker(0, "-KILL");
    stack.wait_worker(0);
    stack.start_worker();
    let at = wait_completed(&stack, id, 0, Duration::from_secs(1)).await;
    wait_completed(&stack, id, at + 30, Duration::from_secs(60)).await;
    // kill -9 the dispatcher; its job goes to the restarted one.
    stack.kill_dispatcher();
    stack.start_dispatcher();
    let done = wait_end(&stack, id, Duration::from_secs(90)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], n);
    let out = file_lines(&stack, done["output_file_id"].as_str()).await;
    let expect: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    assert_eq!(custom_ids(&out), expect, "every item once, in order");
    assert!(done["error_file_id"].is_null());
    // One successful call per item: nothing answered twice.
    let (ok_rows, distinct, _, _, _) = batch_rows(&stack, id, n).await;
    assert_eq!((ok_rows, distinct), (n, n));
}

/// A worker stored an item's answer and died before it published the usage
/// event (the answer and its bill are one stored result): the worker that gets
/// the item next publishes the stored event, once however often the item comes
/// back, and calls no provider.
#[tokio::test]
async fn an_item_answered_before_its_worker_died_is_billed_once_from_its_stored_result() {
    let stack = Stack::start_with(StackOptions {
        clickhouse: true,
        ..StackOptions::default()
    })
    .await;
    let nats = sy_test_support::nats().await;
    let js = async_nats::jetstream::new(nats);
    let subjects = sy_protocol::Subjects::new(&stack.namespace);
    let item = sy_protocol::batch::BatchItem {
        batch_id: "batch_crash1".into(),
        index: 0,
        custom_id: "c0".into(),
    };
    let request_id = item.request_id();
    let now = sy_protocol::now_unix_ms();
    let event_id = sy_protocol::UsageEvent::event_id_of(request_id, 1);
    let event: sy_protocol::UsageEvent = serde_json::from_value(json!({
        "event_id": event_id, "request_id": request_id, "attempt": 1,
        "received_unix_ms": now - 2_000, "dispatched_unix_ms": now - 1_500,
        "finished_unix_ms": now - 1_000, "key_id": "test", "ingress_id": "dispatcher",
        "worker_id": "the-worker-that-died", "api": "chat_completions",
        "model": "gpt-4o-mini", "provider": "openai", "upstream_model": "gpt-4o-mini",
        "stream": false, "status": "ok", "input_tokens": 7, "cached_input_tokens": 0,
        "cache_write_tokens": 0, "output_tokens": 5, "reasoning_tokens": 0,
        "input_tokens_source": "provider", "output_tokens_source": "provider",
        "cost_nanos": 1_234, "billed_nanos": 617, "queue_wait_ms": 500,
        "latency_ms": 1_000, "client_disconnected": false, "batch_id": "batch_crash1",
    }))
    .unwrap();
    let frame: sy_protocol::ReplyFrame = serde_json::from_value(json!({
        "type": "final", "seq": 0, "finish_reason": "stop",
        "usage": {"input_tokens": 7, "output_tokens": 5},
    }))
    .unwrap();
    let result = sy_protocol::batch::BatchResult {
        batch_id: item.batch_id.clone(),
        index: 0,
        custom_id: item.custom_id.clone(),
        request_id,
        frames: vec![frame],
        usage: Some(event),
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, "batch_crash1.0");
    js.publish_with_headers(
        subjects.batch_result("batch_crash1", 0),
        headers,
        serde_json::to_vec(&result).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // The item, as JetStream redelivers it (twice: two crashes).
    let envelope = sy_protocol::RequestEnvelope {
        ingress_id: "dispatcher".into(),
        batch: Some(item),
        ..crate::stack::envelope(request_id, String::new(), now - 2_000, now + 60_000, "hi")
    };
    for delivery in 0..2 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("crash-test-{delivery}").as_str(),
        );
        js.publish_with_headers(
            subjects.batch_request("openai", "batch_crash1"),
            headers,
            serde_json::to_vec(&envelope).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let ch = stack.clickhouse.as_ref().unwrap();
    let client = sy_accounting::client(ch);
    let query = format!(
        "SELECT count(), any(worker_id), toString(sum(assumeNotNull(billed))) \
         FROM {}.requests WHERE request_id = '{request_id}'",
        ch.database
    );
    let until = Instant::now() + Duration::from_secs(15);
    let row = loop {
        let row: (u64, String, String) = client.query(&query).fetch_one().await.unwrap();
        if row.0 > 0 || Instant::now() > until {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(row.0, 1, "the stored usage event, once: {row:?}");
    assert_eq!(row.1, "the-worker-that-died");
    assert_eq!(row.2.parse::<f64>().unwrap(), 0.000_000_617);
    // Both deliveries were handled (and answered nothing new) by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row: (u64, String, String) = client.query(&query).fetch_one().await.unwrap();
    assert_eq!(row.0, 1, "{row:?}");
    assert_eq!(
        stack.mock.stats().requests,
        0,
        "the answered item was called again"
    );
}

#[tokio::test]
async fn the_cli_submits_waits_and_writes_results_and_embeddings_batch_too() {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    // An embeddings batch through the CLI.
    let input = dir.path().join("vectors.jsonl");
    let lines: Vec<String> = (0..3)
        .map(|i| {
            json!({"custom_id": format!("e{i}"), "method": "POST", "url": "/v1/embeddings",
                   "body": {"model": "text-embedding-3-small", "input": format!("text {i}"), "dimensions": 4}})
            .to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let base = stack.base.clone();
    let cli = move |args: Vec<String>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("batch")
            .args(["--url", &base, "--api-key", KEY])
            .args(args)
            .output()
            .unwrap()
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let input_arg = input.display().to_string();
    // Off the test's runtime: the mock provider answering the batch runs on it.
    let submit = args(&[
        "submit",
        &input_arg,
        "--endpoint",
        "/v1/embeddings",
        "--wait",
    ]);
    let out = tokio::task::spawn_blocking({
        let cli = cli.clone();
        move || cli(submit)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("3/3  done 3  failed 0"),
        "progress line: {stderr}"
    );
    let id = stdout.lines().next().unwrap().to_owned();
    assert!(id.starts_with("batch_"), "{stdout}");
    let written = std::fs::read_to_string(dir.path().join("vectors.output.jsonl")).unwrap();
    let rows: Vec<Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(custom_ids(&rows), ["e0", "e1", "e2"]);
    for r in &rows {
        let body = &r["response"]["body"];
        assert_eq!(body["object"], "list");
        assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 4);
    }
    // list, status and results.
    let list = cli(args(&["list"]));
    assert!(String::from_utf8_lossy(&list.stdout).contains(&format!("{id}  completed")));
    let status = cli(args(&["status", &id]));
    let b: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(b["endpoint"], "/v1/embeddings");
    let results = cli(args(&["results", &id]));
    assert_eq!(String::from_utf8_lossy(&results.stdout), written);
    // An error from the server is the CLI's error, with a non-zero exit.
    let missing = cli(args(&["status", "batch_nope"]));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("No such Batch"));
}

/// Publishes a native batch job on `<ns>.batch.submit` (stored by JetStream) and
/// returns the next completion announcement from `done`.
pub(crate) async fn submit_native(
    js: &async_nats::jetstream::Context,
    ns: &str,
    job: &Value,
    done: &mut async_nats::Subscriber,
) -> async_nats::Message {
    use futures::StreamExt;
    js.publish(
        sy_protocol::Subjects::new(ns).batch_submit(),
        serde_json::to_vec(job).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), done.next())
        .await
        .unwrap()
        .unwrap()
}
