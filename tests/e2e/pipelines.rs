//! Pipelines end to end (issue 20): `pipeline:blog` drafts on the Cohere
//! mock, critiques on the Anthropic mock and rewrites on the OpenAI mock,
//! each step through the queue with a usage row linked to the run; the last
//! step streams to the client in its own API; a failed step fails the run
//! naming it, unless its model's fallback recovers; the run is readable
//! afterwards by its project only.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::stack::{Stack, StackOptions};
use crate::tenants::{owner, tenants_store};

const RUN: &str = "x-switchyard-pipeline-run";

async fn run_of(stack: &Stack, key: &str, id: &str) -> (u16, Value) {
    let resp = stack
        .http
        .get(stack.url(&format!("/v1/pipelines/runs/{id}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The run's usage rows: (step, provider, status), by step name.
async fn rows(stack: &Stack, run: &str, n: usize) -> Vec<(String, String, String)> {
    let c = stack.clickhouse.as_ref().unwrap();
    let client = sy_accounting::client(c);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let rows: Vec<(String, String, String)> = client
            .query(&format!(
                "SELECT pipeline_step, provider, status FROM {}.requests FINAL \
                 WHERE pipeline_run = ? ORDER BY received_ms, pipeline_step",
                c.database
            ))
            .bind(run)
            .fetch_all()
            .await
            .unwrap();
        if rows.len() >= n {
            return rows;
        }
        assert!(
            Instant::now() < until,
            "{} rows of {n} for run {run}",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_runs_on_three_dialects_links_its_rows_and_shows_its_run_to_its_project_only() {
    let (store, tenants) = tenants_store("pl").await;
    let actor = owner();
    let org = store.create_org(&actor, "A").await.unwrap();
    let mut keys = Vec::new();
    for name in ["p1", "p2"] {
        let p = store.create_project(&actor, org, name).await.unwrap();
        let spec = sy_control::store::KeySpec::named("k");
        keys.push(store.create_key(&actor, p, &spec).await.unwrap().1.key);
    }
    let (mine, theirs) = (&keys[0], &keys[1]);
    let stack = Stack::start_with(StackOptions {
        sections: tenants,
        clickhouse: true,
        ..Default::default()
    })
    .await;
    let models: Value = stack
        .http
        .get(stack.url("/v1/models"))
        .bearer_auth(mine)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(models.to_string().contains("pipeline:blog"), "{models}");

    // Streamed: the rewrite streams to the client as Chat Completions chunks.
    let before = stack.upstream_requests();
    let resp = stack
        .http
        .post(stack.url("/v1/chat/completions"))
        .bearer_auth(mine)
        .json(&json!({"model": "pipeline:blog", "stream": true,
                      "messages": [{"role": "user", "content": "tides"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let run = resp.headers()[RUN].to_str().unwrap().to_owned();
    assert_eq!(resp.headers()["x-switchyard-provider"], "openai");
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("chat.completion.chunk") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    assert_eq!(stack.upstream_requests(), before + 3, "one call per step");
    // The run, for its project: each earlier step's output and who answered.
    let (status, r) = run_of(&stack, mine, &run).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["status"], "completed");
    let steps = r["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["draft", "critique", "rewrite"]);
    let providers: Vec<&str> = steps
        .iter()
        .map(|s| s["provider"].as_str().unwrap())
        .collect();
    assert_eq!(providers, ["cohere", "anthropic", "openai"]);
    for s in &steps[..2] {
        assert_eq!(s["status"], "completed");
        assert!(!s["output"].as_str().unwrap().is_empty(), "{s}");
    }
    assert_eq!(steps[2]["status"], "answering");
    // Not for another project (nor an id that does not read).
    assert_eq!(run_of(&stack, theirs, &run).await.0, 404);
    assert_eq!(run_of(&stack, mine, "not-a-run").await.0, 404);
    // Three usage rows, one per step, linked to the run.
    let linked = rows(&stack, &run, 3).await;
    let by_step: Vec<(&str, &str)> = linked
        .iter()
        .map(|(s, p, _)| (s.as_str(), p.as_str()))
        .collect();
    assert_eq!(
        by_step,
        [
            ("draft", "cohere"),
            ("critique", "anthropic"),
            ("rewrite", "openai")
        ]
    );

    // An Anthropic client gets the last step in Messages' shape.
    let resp = stack
        .http
        .post(stack.url("/v1/messages"))
        .header("x-api-key", mine)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "pipeline:blog", "max_tokens": 200,
                      "messages": [{"role": "user", "content": "rivers"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let m: Value = resp.json().await.unwrap();
    assert_eq!(m["type"], "message", "{m}");

    // A step that fails without a fallback fails the run, naming the step.
    let resp = stack
        .http
        .post(stack.url("/v1/chat/completions"))
        .bearer_auth(mine)
        .json(&json!({"model": "pipeline:blog",
                      "messages": [{"role": "user", "content": "tides [[mock:status=500,only=cohere]]"}]}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_server_error(), "{}", resp.status());
    let failed_run = resp.headers()[RUN].to_str().unwrap().to_owned();
    let e: Value = resp.json().await.unwrap();
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Step 'draft' of pipeline 'blog'"),
        "{message}"
    );
    let (_, r) = run_of(&stack, mine, &failed_run).await;
    assert_eq!(r["status"], "failed");
    assert_eq!(r["steps"].as_array().unwrap().len(), 1);
    assert!(r["steps"][0]["error"]["message"].is_string(), "{r}");

    // A step whose model falls back recovers: the run completes.
    let resp = stack
        .http
        .post(stack.url("/v1/chat/completions"))
        .bearer_auth(mine)
        .json(&json!({"model": "pipeline:sturdy",
                      "messages": [{"role": "user", "content": "tides [[mock:status=500,only=openai]]"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sturdy = resp.headers()[RUN].to_str().unwrap().to_owned();
    let (_, r) = run_of(&stack, mine, &sturdy).await;
    assert_eq!(r["status"], "completed");
    assert_eq!(r["steps"][0]["provider"], "anthropic", "{r}");
    // Its rows: the failed attempt and the fallback of the first step, then the second.
    let linked = rows(&stack, &sturdy, 3).await;
    assert!(
        linked
            .iter()
            .any(|(s, p, st)| s == "draft" && p == "openai" && st == "error"),
        "{linked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_runs_as_a_batch_item_and_a_failed_step_is_the_items_error() {
    use crate::batch::{create, file_lines, line, upload, wait_end};
    let stack = Stack::start().await;
    let lines = [
        line("blog", "pipeline:blog", "tides"),
        line("plain", "gpt-4o-mini", "hi"),
        line(
            "bad",
            "pipeline:blog",
            "tides [[mock:status=500,only=cohere]]",
        ),
    ];
    let before = stack.upstream_requests();
    let file: Value = upload(&stack, crate::stack::KEY, lines.join("\n").into_bytes())
        .await
        .json()
        .await
        .unwrap();
    let created: Value = create(&stack, crate::stack::KEY, file["id"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    let done = wait_end(
        &stack,
        created["id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], 2, "{done}");
    assert_eq!(done["request_counts"]["failed"], 1, "{done}");
    let out = file_lines(&stack, done["output_file_id"].as_str()).await;
    let ids: Vec<&str> = out
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["blog", "plain"]);
    let body = &out[0]["response"]["body"];
    assert_eq!(body["object"], "chat.completion", "{body}");
    assert!(
        !body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    let err = file_lines(&stack, done["error_file_id"].as_str()).await;
    assert_eq!(err.len(), 1);
    assert_eq!(err[0]["custom_id"], "bad");
    let message = err[0]["response"]["body"]["error"]["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains("Step 'draft' of pipeline 'blog'"),
        "{message}"
    );
    // Three calls for the pipeline, one for the plain item, one (failed) for
    // the bad item's first step.
    assert_eq!(stack.upstream_requests(), before + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_put_through_the_admin_api_serves_at_once_and_goes_when_deleted() {
    use crate::tenants::ADMIN;
    let (store, tenants) = tenants_store("pa").await;
    let actor = owner();
    let org = store.create_org(&actor, "A").await.unwrap();
    let p = store.create_project(&actor, org, "p").await.unwrap();
    let spec = sy_control::store::KeySpec::named("k");
    let key = store.create_key(&actor, p, &spec).await.unwrap().1.key;
    let stack = Stack::start_with(StackOptions {
        sections: format!(
            "{tenants}\n[[admin_tokens]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nrole = \"owner\"\n"
        ),
        ..Default::default()
    })
    .await;
    let admin = |method: reqwest::Method, body: Option<Value>| {
        let mut r = stack
            .http
            .request(method, stack.url("/admin/v1/pipelines/brief"))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send()
    };
    // A template that names a later step is refused, saying where.
    let bad = admin(
        reqwest::Method::PUT,
        Some(json!({"steps": [
        {"name": "a", "model": "gpt-4o-mini", "prompt": "{{steps.b}}"},
        {"name": "b", "model": "gpt-4o-mini", "prompt": "{{input}}"}]})),
    )
    .await
    .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("steps[0].prompt"));
    let made = admin(reqwest::Method::PUT, Some(json!({"description": "Draft then shorten",
        "steps": [
            {"name": "draft", "model": "gpt-4o-mini", "prompt": "Draft: {{input}}"},
            {"name": "shorten", "model": "claude-sonnet-4-5", "prompt": "Shorten: {{steps.draft}}"}]})))
    .await
    .unwrap();
    assert_eq!(made.status(), 201);
    let v: Value = made.json().await.unwrap();
    assert_eq!(v["model"], "pipeline:brief");
    let chat = |prompt: &'static str| {
        stack
            .http
            .post(stack.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": "pipeline:brief",
                          "messages": [{"role": "user", "content": prompt}]}))
            .send()
    };
    // Every ingress serves it once the key table reloaded (about a second).
    let until = Instant::now() + Duration::from_secs(10);
    let resp = loop {
        let resp = chat("tides").await.unwrap();
        if resp.status() == 200 || Instant::now() > until {
            break resp;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-provider"], "anthropic");
    let models = stack
        .http
        .get(stack.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        models.contains("pipeline:brief") && models.contains("pipeline:blog"),
        "{models}"
    );
    // Deleted: gone from every ingress.
    assert_eq!(
        admin(reqwest::Method::DELETE, None).await.unwrap().status(),
        200
    );
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let status = chat("tides").await.unwrap().status();
        if status == 404 {
            break;
        }
        assert!(Instant::now() < until, "still served: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
