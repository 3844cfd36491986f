//! `GET /metrics` on a running stack (issue 19): Prometheus text with the
//! GenAI and Switchyard metrics of real traffic, and series that stay
//! bounded however many keys and junk model names the traffic carries.

use futures::StreamExt;

use crate::stack::{KEY, Stack, StackOptions, body};

/// Series (sample lines) in a Prometheus text exposition.
fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

/// The 10,000 keys: real ones (from the config file), so every request goes
/// the whole way (admission, the queue, a worker, the usage event) and any
/// place that could turn a key into a label is passed.
fn junk_key(i: u32) -> String {
    format!("sk-sy-junk-key-{i:05}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keys_and_fifty_junk_models_stay_under_five_thousand_series() {
    let keys: String = (0..10_000u32)
        .map(|i| {
            format!(
                "[[keys]]\nname = \"junk-{i:05}\"\nkey = \"{}\"\n",
                junk_key(i)
            )
        })
        .collect();
    let stack = Stack::start_with(StackOptions {
        sections: keys,
        ..Default::default()
    })
    .await;
    // One streamed answer, so the streaming-only metrics have a series.
    let mut b = body("gpt-4o-mini", "hello there, how are you");
    b["stream"] = true.into();
    let r = stack
        .http
        .post(stack.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await.unwrap();
    // 10,000 keys, each answered, and 50 model names nobody configured.
    let url = stack.url("/v1/chat/completions");
    let sent = futures::stream::iter(0..10_050u32)
        .map(|i| {
            let (http, url) = (stack.http.clone(), url.clone());
            async move {
                let (key, model) = if i < 10_000 {
                    (junk_key(i), "gpt-4o-mini".to_owned())
                } else {
                    (KEY.to_owned(), format!("junk-model-{i}"))
                };
                let r = http
                    .post(url)
                    .bearer_auth(key)
                    .json(&body(&model, "hi"))
                    .send()
                    .await
                    .unwrap();
                r.status().as_u16()
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<u16>>()
        .await;
    assert_eq!(sent.iter().filter(|s| **s == 200).count(), 10_000);
    assert_eq!(sent.iter().filter(|s| **s == 404).count(), 50);

    // The worker counts each attempt as its usage event goes out, a moment
    // after the answer; the live state comes with the ingress's polls.
    let attempts = "switchyard_attempts_total{provider=\"openai\",model=\"gpt-4o-mini\",outcome=\"ok\",reason=\"first\"} 10001\n";
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let r = stack.http.get(stack.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4"),
        );
        let text = r.text().await.unwrap();
        if text.contains(attempts)
            && text.contains("switchyard_queue_depth{provider=\"openai\"}")
            && text
                .contains("switchyard_target_healthy{provider=\"openai\",model=\"gpt-4o-mini\"} 1")
        {
            break text;
        }
        assert!(std::time::Instant::now() < until, "{text}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let n = series(&text);
    assert!(n < 5_000, "{n} series");
    assert!(!text.contains("junk-model"), "a junk model name is a label");
    assert!(
        !text.contains("junk-key") && !text.contains("junk-0"),
        "a key is a label"
    );
    for line in [
        "switchyard_requests_total{route=\"/v1/chat/completions\",status=\"2xx\",error_type=\"none\"} 10001\n",
        "switchyard_requests_total{route=\"/v1/chat/completions\",status=\"4xx\",error_type=\"caller\"} 50\n",
        "switchyard_response_start_seconds_count{route=\"/v1/chat/completions\"} 10051\n",
        "switchyard_added_latency_seconds_count{surface=\"chat_completions\",stream=\"false\"} 10000\n",
        "switchyard_added_latency_seconds_count{surface=\"chat_completions\",stream=\"true\"} 1\n",
        "gen_ai_server_request_duration_seconds_count{gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt-4o-mini\",error_type=\"none\"} 10001\n",
        "gen_ai_client_token_usage_count{gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt-4o-mini\",gen_ai_token_type=\"output\"} 10001\n",
        // Time to first token and per output token: the one stream only.
        "gen_ai_server_time_to_first_token_seconds_count{gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt-4o-mini\"} 1\n",
        "gen_ai_server_time_per_output_token_seconds_count{gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt-4o-mini\"} 1\n",
        "switchyard_nats_connected 1\n",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
    // An unknown path is one series, whatever the path.
    for p in ["/nope/1", "/nope/2", "/v1/nope"] {
        let _ = stack.http.get(stack.url(p)).send().await.unwrap();
    }
    let text = stack.metrics().await;
    assert!(
        text.contains(
            "switchyard_requests_total{route=\"unmatched\",status=\"4xx\",error_type=\"caller\"} 3"
        ),
        "{text}"
    );
    assert!(!text.contains("/nope"), "{text}");
}

/// The ingress's metrics and a worker process's (on `[metrics] listen`),
/// both behind the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_behind_a_token_need_it_and_a_worker_serves_its_own() {
    let token = "metrics-token-0123456789";
    let port = sy_test_support::free_port();
    let stack = Stack::start_with(StackOptions {
        sections: format!("[metrics]\ntoken = \"{token}\"\nlisten = \"127.0.0.1:{port}\"\n"),
        ..Default::default()
    })
    .await;
    let get = |t: Option<&'static str>| {
        let (http, url) = (stack.http.clone(), stack.url("/metrics"));
        async move {
            let mut req = http.get(url);
            if let Some(t) = t {
                req = req.bearer_auth(t);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(get(None).await, 401);
    assert_eq!(get(Some("metrics-token-0123456780")).await, 401);
    assert_eq!(get(Some(token)).await, 200);

    // `switchyard all` serves them on its own port only; a worker process
    // on `listen`.
    stack.start_worker();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        if let Ok(r) = stack.http.get(&url).bearer_auth(token).send().await
            && r.status() == 200
        {
            break r.text().await.unwrap();
        }
        assert!(std::time::Instant::now() < until, "no /metrics on {url}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(text.contains("switchyard_nats_connected 1"), "{text}");
    let r = stack.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // The probes Kubernetes and Compose use (deploy/), without the token.
    for probe in ["healthz", "readyz"] {
        let r = stack
            .http
            .get(format!("http://127.0.0.1:{port}/{probe}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "/{probe}");
    }
}

/// Metric names a PromQL text or rules file refers to: the `gen_ai_*` and
/// `switchyard_*` words that are not label names.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    const LABELS: [&str; 4] = [
        "gen_ai_operation_name",
        "gen_ai_provider_name",
        "gen_ai_request_model",
        "gen_ai_token_type",
    ];
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("switchyard_") || w.starts_with("gen_ai_"))
        .filter(|w| !LABELS.contains(w))
        .map(str::to_owned)
        .collect()
}

/// Whether `/metrics` (`text`) has `name`: a family's `# TYPE` line, or one
/// of a histogram's `_bucket`, `_sum`, `_count`.
fn listed(text: &str, name: &str) -> bool {
    let family = |n: &str| text.contains(&format!("# TYPE {n} "));
    family(name)
        || ["_bucket", "_sum", "_count"].iter().any(|s| {
            name.strip_suffix(s)
                .is_some_and(|base| text.contains(&format!("# TYPE {base} histogram")))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboards_and_alerts_query_is_in_metrics_and_the_spend_sql_runs() {
    let stack = Stack::start_with(StackOptions {
        clickhouse: true,
        ..Default::default()
    })
    .await;
    let text = stack.metrics().await;
    let root = sy_test_support::repo_root();
    let mut dashboards = 0;
    let mut checked = std::collections::BTreeSet::new();
    let dir = root.join("deploy/grafana/dashboards");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        dashboards += 1;
        assert!(d["uid"].is_string() && d["title"].is_string(), "{path:?}");
        let panels = d["panels"].as_array().unwrap();
        assert!(!panels.is_empty(), "{path:?}");
        for p in panels {
            for t in p["targets"].as_array().unwrap() {
                if let Some(expr) = t["expr"].as_str() {
                    let names = metric_names(expr);
                    assert!(!names.is_empty(), "{path:?}: {expr}");
                    for n in names {
                        assert!(listed(&text, &n), "{path:?} queries {n}, not in /metrics");
                        checked.insert(n);
                    }
                }
                if let Some(sql) = t["rawSql"].as_str() {
                    // Grafana's macro, and the test's own database.
                    let ch = stack.clickhouse.as_ref().unwrap();
                    let sql = sql
                        .replace("$__timeFilter(ts)", "ts >= now() - 86400")
                        .replace("switchyard.", &format!("{}.", ch.database));
                    let r = stack
                        .http
                        .post(ch.url.as_str())
                        .body(sql.clone())
                        .send()
                        .await
                        .unwrap();
                    let status = r.status();
                    assert!(
                        status.is_success(),
                        "{path:?}: {sql}: {}",
                        r.text().await.unwrap()
                    );
                }
            }
        }
    }
    assert!(dashboards >= 6, "{dashboards} dashboards");
    let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
    let names = metric_names(&alerts);
    assert!(names.len() >= 5, "{names:?}");
    for n in names {
        assert!(listed(&text, &n), "alerts.yml queries {n}, not in /metrics");
        checked.insert(n);
    }
    // And the dashboards cover most of what there is.
    assert!(checked.len() >= 12, "{checked:?}");
}

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's Prometheus (scripts/test.sh installs it) scrapes a running stack
/// with the alert rules loaded, and answers a query for the request counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_stack_and_loads_the_alert_rules() {
    use std::process::Command;
    let root = sy_test_support::repo_root();
    let rules = root.join("deploy/prometheus/alerts.yml");
    let check = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool (Debian's prometheus package; scripts/test.sh installs it)");
    assert!(check.status.success(), "{check:?}");

    let stack = Stack::start_with(StackOptions::default()).await;
    for _ in 0..3 {
        let r = stack
            .http
            .post(stack.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&body("gpt-4o-mini", "hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let dir = tempfile::tempdir().unwrap();
    let target = stack.base.trim_start_matches("http://").to_owned();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: switchyard\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules.display()
        ),
    )
    .unwrap();
    let checked = Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(checked.status.success(), "{checked:?}");
    let port = sy_test_support::free_port();
    let _prometheus = Child(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus (Debian's package; scripts/test.sh installs it)"),
    );
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let query = |q: &'static str| {
        let (http, url) = (stack.http.clone(), format!("{api}/query"));
        async move {
            let q: String = url::form_urlencoded::byte_serialize(q.as_bytes()).collect();
            let r = http.get(format!("{url}?query={q}")).send().await.ok()?;
            r.json::<serde_json::Value>().await.ok()
        }
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let answer = loop {
        if let Some(v) =
            query("sum(switchyard_requests_total{route=\"/v1/chat/completions\",status=\"2xx\"})")
                .await
            && v["data"]["result"][0]["value"][1] == "3"
        {
            break v;
        }
        assert!(
            std::time::Instant::now() < until,
            "Prometheus never saw the requests"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert_eq!(answer["status"], "success");
    let up = query("up{job=\"switchyard\"}").await.unwrap();
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
    let loaded: serde_json::Value = stack
        .http
        .get(format!("{api}/rules"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let n = loaded["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(n, 7, "{loaded}");
}
