//! Retries, fallback, watchdogs and breakers (docs/reliability.md), with faults
//! injected by the mock providers. The stack's `chain` model is the classic
//! chain: openai/gpt-4o-mini → anthropic/claude-sonnet-4-5 → vllm/llama-3.1-8b.
//! Each test prints and asserts its figures.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sy_test_support::sse_data;

use crate::stack::{Stack, StackOptions, body, live_entry, streamed_content};

fn calls(stack: &Stack) -> [u64; 3] {
    [
        stack.mock.stats().requests,
        stack.dialect_mocks[0].1.stats().requests,
        stack.dialect_mocks[3].1.stats().requests,
    ]
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[derive(clickhouse::Row, serde::Deserialize, Debug)]
struct AttemptRow {
    attempt: u32,
    provider: String,
    status: String,
    fallback_reason: String,
}

/// The usage rows of one request, by attempt, once `n` have arrived.
async fn attempts(stack: &Stack, request_id: &str, n: usize) -> Vec<AttemptRow> {
    let c = stack.clickhouse.as_ref().unwrap();
    let client = sy_accounting::client(c);
    let sql = format!(
        "SELECT attempt, provider, status, fallback_reason FROM {}.requests FINAL \
         WHERE toString(request_id) = '{request_id}' ORDER BY attempt",
        c.database
    );
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let rows: Vec<AttemptRow> = client.query(&sql).fetch_all().await.unwrap();
        if rows.len() >= n || Instant::now() > until {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_primary_is_retried_then_the_fallback_answers() {
    let stack = Stack::start_with(StackOptions {
        retries: 1,
        clickhouse: true,
        ..Default::default()
    })
    .await;
    let resp = stack
        .chat(&body("chain", "hello [[mock:status=500,only=openai]]"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-switchyard-provider"), "anthropic");
    assert_eq!(header(&resp, "x-switchyard-model"), "claude-sonnet-4-5");
    assert_eq!(header(&resp, "x-switchyard-attempts"), "3");
    let id = header(&resp, "x-switchyard-request-id");
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["model"].as_str().unwrap().starts_with("claude"),
        "the model that answered: {v}"
    );
    assert_eq!(
        calls(&stack),
        [2, 1, 0],
        "openai twice (one retry), then anthropic"
    );
    let rows = attempts(&stack, &id, 3).await;
    println!("usage rows: {rows:?}");
    let path: Vec<_> = rows
        .iter()
        .map(|r| (r.attempt, r.provider.as_str(), r.status.as_str()))
        .collect();
    assert_eq!(
        path,
        [
            (1, "openai", "error"),
            (2, "openai", "error"),
            (3, "anthropic", "ok")
        ]
    );
    assert_eq!(rows[0].fallback_reason, "");
    assert_eq!(rows[1].fallback_reason, "retry after provider_error");
    assert_eq!(
        rows[2].fallback_reason,
        "openai/gpt-4o-mini failed: provider_error"
    );
    // /metrics counts the three attempts by why they were made.
    let metrics = stack.metrics().await;
    for series in [
        "switchyard_attempts_total{provider=\"openai\",model=\"gpt-4o-mini\",outcome=\"error\",reason=\"first\"} 1\n",
        "switchyard_attempts_total{provider=\"openai\",model=\"gpt-4o-mini\",outcome=\"error\",reason=\"retry\"} 1\n",
        "switchyard_attempts_total{provider=\"anthropic\",model=\"claude-sonnet-4-5\",outcome=\"ok\",reason=\"fallback\"} 1\n",
    ] {
        assert!(metrics.contains(series), "{series}{metrics}");
    }

    // Streamed: the client sees one clean stream from the fallback.
    let mut b = body("chain", "stream [[mock:status=503,only=openai]]");
    b["stream"] = json!(true);
    let resp = stack.chat(&b).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-switchyard-provider"), "anthropic");
    let data = sse_data(resp).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(!streamed_content(&data, 0).is_empty());
    assert_eq!(data.iter().filter(|d| d.contains("\"error\"")).count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_waited_for_and_a_429_storm_goes_to_the_fallback() {
    let stack = Stack::start_with(StackOptions {
        retries: 1,
        ..Default::default()
    })
    .await;
    let started = Instant::now();
    let resp = stack
        .chat(&body(
            "chain",
            "hi [[mock:status=429,retry_after=1,only=openai]]",
        ))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-switchyard-provider"), "anthropic");
    assert!(took >= Duration::from_secs(1), "the retry waited: {took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(calls(&stack), [2, 1, 0]);

    // A storm: every request is served, none fails, no retry comes early.
    let (mut ok, mut failed) = (0, 0);
    for i in 0..10 {
        let resp = stack
            .chat(&body(
                "chain",
                &format!("storm {i} [[mock:status=429,only=openai]]"),
            ))
            .send()
            .await
            .unwrap();
        if resp.status() == 200 && header(&resp, "x-switchyard-provider") == "anthropic" {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    println!("429 storm: sent 10, served by the fallback {ok}, failed {failed}");
    assert_eq!((ok, failed), (10, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_target_times_out_once_and_the_fallback_answers_in_time() {
    let stack = Stack::start_with(StackOptions {
        retries: 2,
        ttft_timeout: "500ms",
        response_timeout: "500ms",
        ..Default::default()
    })
    .await;
    // Streamed: no first token within 500 ms.
    let mut b = body("chain", "hi [[mock:ttft_ms=5000,only=openai]]");
    b["stream"] = json!(true);
    let started = Instant::now();
    let resp = stack.chat(&b).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-switchyard-provider"), "anthropic");
    let data = sse_data(resp).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "{took:?}");
    // Not streamed: no answer at all.
    let resp = stack
        .chat(&body("chain", "hi [[mock:hang=1,only=openai]]"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-switchyard-provider"), "anthropic");
    assert_eq!(
        calls(&stack),
        [2, 2, 0],
        "the silent target is never called twice for one request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_length_falls_back_only_to_larger_windows_and_refusals_are_final() {
    let stack = Stack::start_with(StackOptions {
        retries: 2,
        ..Default::default()
    })
    .await;
    let resp = stack
        .chat(&body(
            "chain",
            "long [[mock:status=400,error=context_length,only=openai]]",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-switchyard-provider"), "anthropic");
    assert_eq!(calls(&stack), [1, 1, 0], "no resend to the same window");
    // Too long for anthropic too: vllm's 8k window is smaller, so it is skipped
    // and the client gets the context-length error.
    let resp = stack
        .chat(&body(
            "chain",
            "longer [[mock:status=400,error=context_length,only=openai]] \
             [[mock:status=400,error=context_length,only=anthropic]]",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    assert_eq!(calls(&stack), [2, 2, 0]);
    // A content refusal: one call, no fallback, a clean 400.
    let resp = stack
        .chat(&body(
            "chain",
            "bad [[mock:status=400,error=content_filter,only=openai]]",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "content_filter", "{v}");
    assert_eq!(calls(&stack), [3, 2, 0]);
    // Another 4xx (the provider rejects our key): final, no fallback, no key leaked.
    let resp = stack
        .chat(&body("chain", "auth [[mock:status=401,only=openai]]"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error() || resp.status() == 502);
    let text = resp.text().await.unwrap();
    assert!(text.contains("credentials"), "{text}");
    assert_eq!(calls(&stack), [4, 2, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_sends_traffic_straight_to_the_fallback_until_it_recovers() {
    let stack = Stack::start().await;
    // Three failures (the stack's threshold) open openai's breaker.
    for i in 0..3 {
        let resp = stack
            .chat(&body(
                "chain",
                &format!("x{i} [[mock:status=500,only=openai]]"),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(header(&resp, "x-switchyard-provider"), "anthropic");
    }
    assert_eq!(calls(&stack), [3, 3, 0]);
    // Now healthy requests skip openai entirely: no failed primary attempt first.
    let until = Instant::now() + Duration::from_secs(5);
    let mut skipped = 0;
    while skipped < 5 {
        let resp = stack.chat(&body("chain", "fine")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        if header(&resp, "x-switchyard-provider") == "anthropic" {
            assert_eq!(header(&resp, "x-switchyard-attempts"), "1");
            skipped += 1;
        }
        assert!(Instant::now() < until, "the breaker never steered traffic");
    }
    assert_eq!(
        stack.mock.stats().requests,
        3,
        "openai not called while open"
    );
    // After the cool-down (2 s) traffic returns to the primary.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let resp = stack.chat(&body("chain", "fine")).send().await.unwrap();
    assert_eq!(header(&resp, "x-switchyard-provider"), "openai");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_after_output_ends_with_an_error_never_a_success() {
    let stack = Stack::start_with(StackOptions {
        retries: 2,
        ..Default::default()
    })
    .await;
    let mut b = body(
        "chain-strict",
        "cut [[mock:tokens=20,cut_after=3,only=openai]]",
    );
    b["stream"] = json!(true);
    let resp = stack.chat(&b).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let data = sse_data(resp).await;
    println!("{data:?}");
    assert!(
        !streamed_content(&data, 0).is_empty(),
        "output reached the client"
    );
    assert_ne!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(
        !data
            .iter()
            .any(|d| d.contains("\"finish_reason\":\"stop\"")),
        "a cut answer never ends like a success"
    );
    assert!(data.last().unwrap().contains("\"error\""), "{data:?}");
    assert_eq!(calls(&stack), [1, 0, 0], "no retry once output was sent");
}

/// Streams `prompt` on `model` and returns (content, last data line, every line).
async fn stream(stack: &Stack, model: &str, prompt: &str) -> (String, String, Vec<String>) {
    let (content, last, data, _) = stream_with_id(stack, model, prompt).await;
    (content, last, data)
}

/// [`stream`], and the request id.
async fn stream_with_id(
    stack: &Stack,
    model: &str,
    prompt: &str,
) -> (String, String, Vec<String>, String) {
    let mut b = body(model, prompt);
    b["stream"] = json!(true);
    let resp = stack.chat(&b).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let id = header(&resp, "x-switchyard-request-id");
    let data = sse_data(resp).await;
    (
        streamed_content(&data, 0),
        data.last().cloned().unwrap_or_default(),
        data,
        id,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_is_recovered_by_prefill_or_splice_and_never_garbled() {
    let stack = Stack::start_with(StackOptions {
        clickhouse: true,
        ..Default::default()
    })
    .await;
    let whole = sy_mock_provider::reply_text("tell me", 20, 0);
    // Prefill: anthropic continues the 5 tokens the client already has.
    let (content, last, data, id) = stream_with_id(
        &stack,
        "chain",
        "tell me [[mock:tokens=20]] [[mock:cut_after=5,only=openai]]",
    )
    .await;
    assert_eq!(content, whole, "{data:?}");
    assert_eq!(last, "[DONE]");
    assert_eq!(calls(&stack), [1, 1, 0]);
    let rows = attempts(&stack, &id, 2).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (rows[0].provider.as_str(), rows[0].status.as_str()),
        ("openai", "error")
    );
    assert_eq!(
        (rows[1].provider.as_str(), rows[1].status.as_str()),
        ("anthropic", "ok")
    );
    assert_eq!(
        rows[1].fallback_reason,
        "mid-stream recovery: openai/gpt-4o-mini failed after output: provider_error, continued by prefill"
    );
    // Each chunk names the model that produced it: the primary's before the
    // cut, the fallback's after.
    let models: Vec<String> = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["model"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        models.first().map(String::as_str),
        Some("gpt-4o-mini"),
        "{models:?}"
    );
    assert!(models.last().unwrap().contains("claude"), "{models:?}");
    // The prefill is refused by anthropic: vllm continues it instead.
    let (content, last, data) = stream(
        &stack,
        "chain",
        "tell me [[mock:tokens=20]] [[mock:cut_after=7,only=openai]] [[mock:no_prefill=1,only=anthropic]]",
    )
    .await;
    assert_eq!(content, whole, "{data:?}");
    assert_eq!(last, "[DONE]");
    assert_eq!(calls(&stack), [2, 2, 1]);
    // Splice: gemini cannot continue a prefill; it regenerates, the 5 tokens
    // already sent are held back, the rest flows.
    let gemini = || stack.dialect_mocks[1].1.stats().requests;
    let (content, last, data) = stream(
        &stack,
        "chain-splice",
        "tell me [[mock:tokens=20]] [[mock:cut_after=5,only=openai]]",
    )
    .await;
    assert_eq!(content, whole, "{data:?}");
    assert_eq!(last, "[DONE]");
    assert_eq!(gemini(), 1);
    // Three cuts opened openai's breaker (requests would start on gemini): let
    // the cool-down pass first.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // A regeneration that stops short of what was sent (diverges): a clean error.
    let (content, last, data) = stream(
        &stack,
        "chain-splice",
        "tell me [[mock:tokens=20]] [[mock:cut_after=8,only=openai]] [[mock:tokens=4,only=gemini]]",
    )
    .await;
    let sent = sy_mock_provider::reply_tokens("tell me", 20, 0)[..8].concat();
    assert_eq!(content, sent, "{data:?}");
    assert!(last.contains("\"error\""), "{data:?}");
    assert!(!data.iter().any(|d| d == "[DONE]"));
    assert_eq!(gemini(), 2);
    println!(
        "recovery: prefill 2 of 2 complete, splice 1 complete, 1 divergence ended with an error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_sheds_new_requests_early_with_retry_after() {
    let stack = Stack::start().await;
    // cohere: 2 in flight at most, new requests refused while 3 wait.
    let mut slow = Vec::new();
    for i in 0..5 {
        let req = stack.chat(&body(
            "command-r-plus",
            &format!("slow {i} [[mock:ttft_ms=3000]]"),
        ));
        slow.push(tokio::spawn(
            async move { req.send().await.unwrap().status() },
        ));
    }
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let v = stack.live_targets().await;
        let queued = live_entry(&v, "providers", "cohere")
            .and_then(|p| p["queued"].as_u64())
            .unwrap_or(0);
        if queued >= 3 {
            break;
        }
        assert!(Instant::now() < until, "the queue never filled: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let resp = stack
        .chat(&body("command-r-plus", "one more"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused early"
    );
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: Value = resp.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("requests queued for cohere (limit 3)"),
        "{msg}"
    );
    let mut served = 0;
    for s in slow {
        if s.await.unwrap() == 200 {
            served += 1;
        }
    }
    println!("shedding: 5 queued requests served {served}, 1 refused early");
    assert_eq!(served, 5, "shedding never drops what was queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_forces_a_target_off_and_gives_it_back() {
    let stack = Stack::start().await;
    let force = |b: Value| {
        stack
            .http
            .put(stack.url("/v1/route/targets"))
            .bearer_auth(crate::stack::KEY)
            .json(&b)
            .send()
    };
    let resp = force(json!({"provider": "openai", "model": "gpt-4o-mini", "state": "off"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["by"], "test", "the audit names the key");
    let schema = std::fs::read_to_string(
        sy_test_support::repo_root().join("schemas/target-override.schema.json"),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&serde_json::from_str(&schema).unwrap()).unwrap();
    assert!(validator.is_valid(&v), "{v}");
    for _ in 0..3 {
        let resp = stack.chat(&body("chain", "hi")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-switchyard-provider"), "anthropic");
        assert_eq!(header(&resp, "x-switchyard-attempts"), "1");
    }
    assert_eq!(calls(&stack)[0], 0, "openai never called while off");
    let v = stack.live_targets().await;
    let openai = live_entry(&v, "targets", "openai").unwrap();
    assert_eq!(
        (openai["healthy"].clone(), openai["forced"].clone()),
        (json!(false), json!(false))
    );
    // Given back to its health: traffic returns.
    let resp = force(json!({"provider": "openai", "model": "gpt-4o-mini", "state": "auto"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // This ingress applies it at once; the workers within one NATS hop (a
    // worker that has not seen it yet still skips the target), so traffic
    // returns within moments, not necessarily on the very next request.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = stack.chat(&body("chain", "hi")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        if header(&resp, "x-switchyard-provider") == "openai" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "openai never served again after auto"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Bad input: a clear 400; no key: 401.
    let resp = force(json!({"provider": "nope", "model": "m", "state": "off"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = force(json!({"provider": "openai", "model": "m", "state": "sideways"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = stack
        .http
        .put(stack.url("/v1/route/targets"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_let_refusals_fall_back_and_tighten_the_watchdogs() {
    let stack = Stack::start().await;
    let resp = stack
        .chat(&body(
            "chain-lenient",
            "bad [[mock:status=400,error=content_filter,only=openai]]",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the route opted in to refusal fallback");
    assert_eq!(header(&resp, "x-switchyard-provider"), "anthropic");
    // The route's 300 ms first-token limit, not the target's 10 s.
    let mut b = body("chain-lenient", "slow [[mock:ttft_ms=3000,only=openai]]");
    b["stream"] = json!(true);
    let started = Instant::now();
    let resp = stack.chat(&b).send().await.unwrap();
    assert_eq!(header(&resp, "x-switchyard-provider"), "anthropic");
    let data = sse_data(resp).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_and_the_same_target_answers() {
    let stack = Stack::start_with(StackOptions {
        retries: 3,
        ..Default::default()
    })
    .await;
    let reset = stack
        .http
        .post(format!(
            "{}/mock/reset",
            stack.mock.base_url().trim_end_matches("/v1")
        ))
        .send()
        .await
        .unwrap();
    assert!(reset.status().is_success());
    // openai fails for 150 ms after the reset, then recovers.
    let resp = stack
        .chat(&body(
            "chain",
            "hi [[mock:status=500,fail_for_ms=150,only=openai]]",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "x-switchyard-provider"),
        "openai",
        "retried, not failed over"
    );
    let attempts: u32 = header(&resp, "x-switchyard-attempts").parse().unwrap();
    assert!((2..=4).contains(&attempts), "{attempts}");
    assert_eq!(calls(&stack)[1], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_or_an_unreadable_event_mid_stream_is_recovered_and_no_done_is_complete() {
    let stack = Stack::start_with(StackOptions {
        ttft_timeout: "500ms",
        ..Default::default()
    })
    .await;
    let whole = sy_mock_provider::reply_text("tell me", 20, 0);
    let started = Instant::now();
    let (content, last, data) = stream(
        &stack,
        "chain",
        "tell me [[mock:tokens=20]] [[mock:stall_after=6,only=openai]]",
    )
    .await;
    assert_eq!(content, whole, "{data:?}");
    assert_eq!(last, "[DONE]");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let (content, last, data) = stream(
        &stack,
        "chain",
        "tell me [[mock:tokens=20]] [[mock:garbage_after=4,only=openai]]",
    )
    .await;
    assert_eq!(content, whole, "{data:?}");
    assert_eq!(last, "[DONE]");
    assert_eq!(calls(&stack), [2, 2, 0]);
    // A stream that ends with its finish reason but no [DONE] is complete.
    let (content, last, data) = stream(
        &stack,
        "gpt-4o-mini",
        "tell me [[mock:tokens=20,no_done=1]]",
    )
    .await;
    assert_eq!(content, whole, "{data:?}");
    assert_eq!(last, "[DONE]");
    assert_eq!(calls(&stack), [3, 2, 0], "no retry, no fallback");
}

/// Issue 24, defect 11: a half-open breaker's probe is one call, however many
/// retries the target has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_breakers_probe_is_one_call() {
    let stack = Stack::start_with(StackOptions {
        retries: 2,
        ..Default::default()
    })
    .await;
    let failing = || body("gpt-4o-mini", "x [[mock:status=500]]");
    // One request, three failed calls (a call and two retries): the breaker opens.
    let r = stack.chat(&failing()).send().await.unwrap();
    assert_ne!(r.status(), 200);
    assert_eq!(stack.mock.stats().requests, 3);
    // After the cool-down (2 s) the next call is a probe: once, no retries.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = stack.chat(&failing()).send().await.unwrap();
    assert_ne!(r.status(), 200);
    assert_eq!(stack.mock.stats().requests, 4, "the probe was retried");
}

/// Issue 24, defect 11: the wait for a streamed call's headers and the wait
/// for its first token are two settings: with `header_timeout` set, a target
/// may take longer than `ttft_timeout` to answer with headers, and still fails
/// when no token follows them within `ttft_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_the_first_token_have_their_own_limits() {
    let stack = Stack::start_with(StackOptions {
        ttft_timeout: "1s",
        openai_extra: "header_timeout = \"4s\"",
        ..Default::default()
    })
    .await;
    // Headers after 1.5 s (past ttft_timeout), the first token at once: served.
    let (content, last, data) = stream(
        &stack,
        "gpt-4o-mini",
        "slow door [[mock:headers_ms=1500,tokens=3]]",
    )
    .await;
    assert_eq!(last, "[DONE]", "{data:?}");
    assert!(!content.is_empty());
    // Headers at once, no token for 2.5 s (past ttft_timeout from the headers):
    // the call fails before anything was sent, so the client gets the error.
    let mut b = body("gpt-4o-mini", "slow start [[mock:ttft_ms=2500,tokens=3]]");
    b["stream"] = json!(true);
    let started = Instant::now();
    let resp = stack.chat(&b).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "provider_timeout", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no first token"),
        "{v}"
    );
    assert!(started.elapsed() < Duration::from_millis(2400));
}
