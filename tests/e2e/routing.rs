//! The request's class: classified in the ingress, reported in a header and
//! recorded in the usage row; client hints win over the model.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::stack::{Stack, StackOptions, body, json_of, live_entry};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_routes_by_class_and_explain_shows_the_same_decision() {
    let stack = Stack::start().await;
    for (prompt, route, provider) in [
        (
            "Write a Python function that merges two sorted lists.",
            "code",
            "anthropic",
        ),
        ("what is the capital of france", "simple", "openai"),
        (
            "Generate an image of a lighthouse at dusk, oil painting",
            "default",
            "openai",
        ),
    ] {
        let b = body("auto", prompt);
        let explained: Value = stack
            .http
            .post(stack.url("/v1/route/explain"))
            .bearer_auth(crate::stack::KEY)
            .json(&b)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(explained["route"], route, "{explained}");
        assert_eq!(explained["chosen"]["provider"], provider, "{explained}");
        assert!(explained["probabilities"].as_object().unwrap().len() == 5);
        let resp = stack.chat(&b).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let h = |k: &str| resp.headers()[k].to_str().unwrap().to_owned();
        assert_eq!(h("x-switchyard-route"), route);
        assert_eq!(
            h("x-switchyard-provider"),
            provider,
            "explain matches what the request did"
        );
        assert_eq!(
            h("x-switchyard-class"),
            explained["class"].as_str().unwrap()
        );
    }
    // The cheapest route ranks by the price table; the explain lists why.
    let v: Value = stack
        .http
        .post(stack.url("/v1/route/explain"))
        .bearer_auth(crate::stack::KEY)
        .json(&body("auto", "what is the capital of france"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["strategy"], "cheapest");
    assert_eq!(v["fallback"][0]["provider"], "anthropic");
    assert_eq!(v["candidates"].as_array().unwrap().len(), 2);
    // Weighted canary: about 10 % to gemini.
    let mut gemini = 0;
    for i in 0..200 {
        let resp = stack
            .chat(&body("auto:canary", &format!("hello {i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        if resp.headers()["x-switchyard-provider"] == "gemini" {
            gemini += 1;
        }
    }
    assert!((5..=40).contains(&gemini), "gemini served {gemini} of 200");
    // Embeddings cannot use a chat router.
    let resp = stack
        .http
        .post(stack.url("/v1/embeddings"))
        .bearer_auth(crate::stack::KEY)
        .json(&json!({"model": "auto", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

/// The routing table reloads on SIGHUP while requests keep flowing; none fails,
/// and an invalid file is refused with the old table kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_table_reloads_under_load_without_failing_a_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stack = Arc::new(Stack::start().await);
    let provider_of = |stack: Arc<Stack>| async move {
        let resp = stack
            .chat(&body("auto", "Tell me a short story about a fox."))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.headers()["x-switchyard-provider"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(provider_of(stack.clone()).await, "openai");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stack, stop, ok, failed) = (stack.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = stack
                    .chat(&body("auto", "hello [[mock:tokens=4,delay_ms=2]]"))
                    .send()
                    .await;
                let good = match r {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = "name = \"default\"\ntargets = [{ provider = \"openai\", model = \"gpt-4o-mini\" }]";
    assert!(stack.config_text.contains(old));
    let new_text = stack.config_text.replace(
        old,
        "name = \"default\"\ntargets = [{ provider = \"gemini\", model = \"gemini-2.5-flash\" }]",
    );
    std::fs::write(&stack.config_path, &new_text).unwrap();
    stack.hangup();
    let until = Instant::now() + Duration::from_secs(10);
    while provider_of(stack.clone()).await != "gemini" {
        assert!(Instant::now() < until, "the new table never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An invalid file is refused: the table stays as it was.
    std::fs::write(
        &stack.config_path,
        new_text.replace("strategy = \"balanced\"", "strategy = \"luckiest\""),
    )
    .unwrap();
    stack.hangup();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(provider_of(stack.clone()).await, "gemini");
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed, 0,
        "{failed} requests failed across the reloads ({ok} succeeded)"
    );
    assert!(ok > 50, "load kept flowing: {ok}");
}

/// `switchyard route simulate` replays prompts through the classifier and the
/// router and compares the cost with the strongest target.
#[test]
fn route_simulate_reports_the_mix_and_the_saving() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        [
            r#"{"text": "Write a Python function that merges two sorted lists."}"#,
            r#"{"text": "what is the capital of france"}"#,
            r#"{"messages": [{"role": "user", "content": "Tell me a short story about a fox."}]}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let config = sy_test_support::repo_root().join("deploy/local/switchyard.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&config)
        .args(["route", "simulate", "--input"])
        .arg(&prompts)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("3 prompts through router \"auto\""), "{text}");
    assert!(
        text.contains("| code | 1 |") && text.contains("| simple | 1 |"),
        "{text}"
    );
    assert!(
        text.contains("everything to anthropic / claude-sonnet-4-5"),
        "{text}"
    );
    let saving: f64 = text
        .split("saving ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(saving > 0.0, "{text}");
    // A router that does not exist is a clear error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&config)
        .args(["route", "simulate", "--router", "auto:nope", "--input"])
        .arg(&prompts)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no router \"auto:nope\""));
}

/// Live state: every worker's call results reach the ingress, so `fastest`
/// follows measured time to first token, failing targets are skipped for the
/// cool-down, and a provider at its concurrency cap with a queue is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastest_follows_live_latency_and_skips_failing_and_saturated_targets() {
    let stack = Stack::start().await;
    let explain = |model: &'static str| {
        let req = stack
            .http
            .post(stack.url("/v1/route/explain"))
            .bearer_auth(crate::stack::KEY)
            .json(&body(model, "hello there"));
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let measured = |v: &Value, provider: &str| {
        live_entry(v, "targets", provider).and_then(|t| t["ttft_ms"].as_f64())
    };
    // Nothing measured yet: config order.
    assert_eq!(explain("auto:fast").await["chosen"]["provider"], "openai");
    // The openai target is slow (300 ms to first token), anthropic is quick;
    // both are learned from requests to the named models.
    for _ in 0..3 {
        let slow = body("gpt-4o-mini", "hi [[mock:ttft_ms=300]]");
        assert_eq!(stack.chat(&slow).send().await.unwrap().status(), 200);
        let quick = body("claude-sonnet-4-5", "hi");
        assert_eq!(stack.chat(&quick).send().await.unwrap().status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = stack.live_targets().await;
        if let (Some(slow), Some(quick)) = (measured(&v, "openai"), measured(&v, "anthropic")) {
            assert!(slow >= 250.0 && quick < 200.0, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "never measured: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = explain("auto:fast").await;
    assert_eq!(v["chosen"]["provider"], "anthropic", "{v}");
    assert_eq!(v["fallback"][0]["provider"], "openai", "{v}");
    let resp = stack
        .chat(&body("auto:fast", "hello there"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-provider"], "anthropic");

    // Three consecutive failures make anthropic unhealthy: skipped, with the reason.
    for _ in 0..3 {
        let failing = body("claude-sonnet-4-5", "hi [[mock:status=500]]");
        assert_eq!(stack.chat(&failing).send().await.unwrap().status(), 502);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let v = explain("auto:fast").await;
        if v["chosen"]["provider"] == "openai" {
            break v;
        }
        assert!(Instant::now() < deadline, "never skipped: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let why = v["candidates"][1]["skipped"].as_str().unwrap();
    assert!(
        why.starts_with("unhealthy: 3 consecutive failures (last: provider_error)"),
        "{why}"
    );
    let resp = stack
        .chat(&body("auto:fast", "hello there"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-switchyard-provider"], "openai");
    // After the cool-down (2 s in the test stack) it gets traffic again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        explain("auto:fast").await["chosen"]["provider"],
        "anthropic"
    );

    // cohere (max_concurrency 2) with two calls in flight and two queued is skipped.
    let mut slow_calls = Vec::new();
    for _ in 0..4 {
        let req = stack.chat(&body("command-r-plus", "hi [[mock:ttft_ms=4000]]"));
        slow_calls.push(tokio::spawn(
            async move { req.send().await.unwrap().status() },
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = explain("auto:fast").await;
        if v["candidates"][2]["skipped"] == "at its concurrency cap" {
            let load = stack.live_targets().await;
            let cohere = live_entry(&load, "providers", "cohere").unwrap();
            assert_eq!(cohere["cap"], 2, "{load}");
            break;
        }
        assert!(Instant::now() < deadline, "cohere never saturated: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in slow_calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    // The operator view needs a key.
    let resp = stack
        .http
        .get(stack.url("/v1/route/targets"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

/// A route that requires a tag takes the requests that carry it (from the
/// header or the body's metadata), in explain and in the real request, and
/// no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_requires_a_tag_serves_requests_tagged_so() {
    let stack = Stack::start().await;
    let prompt = "Write a Python function that merges two sorted lists.";
    let explain = |tags: Option<&'static str>, b: Value| {
        let mut r = stack
            .http
            .post(stack.url("/v1/route/explain"))
            .bearer_auth(crate::stack::KEY)
            .json(&b);
        if let Some(t) = tags {
            r = r.header("x-switchyard-tags", t);
        }
        r.send()
    };
    let v: Value = explain(Some("tier=free"), body("auto", prompt))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["route"], "free-tier", "{v}");
    let v: Value = explain(Some("tier=pro"), body("auto", prompt))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["route"], "code", "{v}");
    // The real request, tagged in its metadata.
    let mut b = body("auto", prompt);
    b["metadata"] = serde_json::json!({"tier": "free"});
    let resp = stack.chat(&b).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-route"], "free-tier");
    assert_eq!(resp.headers()["x-switchyard-provider"], "openai");
    // A malformed tag is refused by explain too.
    let r = explain(Some("tier"), body("auto", prompt)).await.unwrap();
    assert_eq!(r.status(), 400);
}

/// A router routes images, audio and rerank requests like chat: each kind
/// takes the first route that lists it, ranked by the route's strategy with
/// per-unit prices, falls back, and says so in explain and the usage row; a
/// kind no route takes is a 400 before any provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_route_images_audio_and_rerank_by_kind() {
    use reqwest::multipart::{Form, Part};
    let stack = Stack::start_with(StackOptions {
        clickhouse: true,
        ..Default::default()
    })
    .await;
    let post = |path: &str| {
        stack
            .http
            .post(stack.url(path))
            .bearer_auth(crate::stack::KEY)
    };
    let h = |r: &reqwest::Response, k: &str| r.headers()[k].to_str().unwrap().to_owned();
    let upload = || {
        Form::new().text("model", "auto:media").part(
            "file",
            Part::bytes(sy_mock_provider::audio::wav(1.0))
                .file_name("a.wav")
                .mime_str("audio/wav")
                .unwrap(),
        )
    };

    // Images: one image from the self-hosted model at $0.003 beats
    // gpt-image-1's ~1,056 output tokens at $40 a million.
    let drawing = json!({"model": "auto:media", "prompt": "a red kite", "size": "16x16"});
    let explained = json_of(post("/v1/route/explain?api=images").json(&drawing)).await;
    assert_eq!(
        (&explained["kind"], &explained["class"], &explained["route"]),
        (&json!("images"), &Value::Null, &json!("pictures")),
        "{explained}"
    );
    assert_eq!(explained["chosen"]["model"], "flux-schnell", "{explained}");
    assert_eq!(explained["fallback"][0]["model"], "gpt-image-1");
    assert_eq!(explained["images"], 1);
    assert_eq!(explained["candidates"][1]["cost_nanos"], 3_000_000);
    let resp = post("/v1/images/generations")
        .json(&drawing)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        (
            h(&resp, "x-switchyard-route"),
            h(&resp, "x-switchyard-provider")
        ),
        ("pictures".to_owned(), "vllm".to_owned())
    );
    assert!(resp.headers().get("x-switchyard-class").is_none());

    // Transcriptions: the cheaper Whisper per second; the route's speech
    // targets are skipped with the reason.
    let explained = json_of(post("/v1/route/explain?api=transcriptions").multipart(upload())).await;
    assert_eq!(explained["route"], "voice", "{explained}");
    assert_eq!(explained["chosen"]["model"], "whisper-large-v3");
    assert!(explained["estimated_audio_seconds"].as_u64().unwrap() >= 1);
    let skipped = explained["candidates"][2]["skipped"].as_str().unwrap();
    assert_eq!(skipped, "serves speech, not transcriptions");
    let resp = post("/v1/audio/transcriptions")
        .multipart(upload())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(h(&resp, "x-switchyard-model"), "whisper-large-v3");

    // Speech in the same route: the priced voice before the unpriced one.
    let resp = post("/v1/audio/speech")
        .json(&json!({"model": "auto:media", "input": "Hello there.", "voice": "alloy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        (
            h(&resp, "x-switchyard-route"),
            h(&resp, "x-switchyard-model")
        ),
        ("voice".to_owned(), "tts-1".to_owned())
    );
    assert!(!resp.bytes().await.unwrap().is_empty());

    // Rerank: a few short documents cost less in tokens than a search unit.
    let resp = post("/v1/rerank")
        .json(&json!({"model": "auto:media", "query": "fruit", "documents": ["apple", "car"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(h(&resp, "x-switchyard-model"), "bge-reranker-v2-m3");

    // A kind no route takes: 400 in the API's format, no provider called.
    let before = stack.upstream_requests();
    let resp = stack
        .chat(&body("auto:media", "hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("'auto:media' routes no chat requests (it routes images, rerank, speech, transcriptions)"),
        "{v}"
    );
    let resp = post("/v1/embeddings")
        .json(&json!({"model": "auto", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["param"], "model", "{v}");
    assert_eq!(stack.upstream_requests(), before);
    let resp = post("/v1/route/explain?api=videos")
        .json(&drawing)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // The chosen image model failing: the route's next target serves.
    let resp = post("/v1/images/generations")
        .json(&json!({"model": "auto:media", "prompt": "a blue kite [[mock:status=500,only=vllm]]", "size": "16x16"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(h(&resp, "x-switchyard-provider"), "openai");

    // The usage rows say which route and strategy chose, and which rank served.
    let rows: Vec<(String, String, String, String, u8)> = stack
        .rows_until(
            "SELECT api, provider, route, strategy, target_rank FROM {db}.requests FINAL \
             WHERE status = 'ok' ORDER BY received_ms",
            |r: &[(String, String, String, String, u8)]| r.len() >= 5,
        )
        .await;
    let seen: Vec<(&str, &str, &str, &str, u8)> = rows
        .iter()
        .map(|(a, p, r, s, n)| (a.as_str(), p.as_str(), r.as_str(), s.as_str(), *n))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("images", "vllm", "pictures", "cheapest", 2),
            ("transcriptions", "vllm", "voice", "cheapest", 2),
            ("speech", "openai", "voice", "cheapest", 3),
            ("rerank", "vllm", "ranking", "cheapest", 2),
            ("images", "openai", "pictures", "cheapest", 1),
        ]
    );
}
