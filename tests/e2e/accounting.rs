//! Usage reaches ClickHouse: one row per attempt, exact tokens and cost, each
//! event counted once.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sy_protocol::UsageEvent;

use crate::stack::{Stack, StackOptions, body, json_of};

fn ch(stack: &Stack) -> (clickhouse::Client, String) {
    let c = stack.clickhouse.as_ref().unwrap();
    (sy_accounting::client(c), c.database.clone())
}

/// A stack whose accounting writes into a fresh database on the shared ClickHouse.
async fn accounting_stack() -> Stack {
    Stack::start_with(StackOptions {
        clickhouse: true,
        ..Default::default()
    })
    .await
}

/// The single `u64` a query returns.
async fn scalar(client: &clickhouse::Client, sql: &str) -> u64 {
    client.query(sql).fetch_one().await.unwrap()
}

async fn wait_rows(stack: &Stack, n: u64) -> u64 {
    let (client, db) = ch(stack);
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let count: u64 = scalar(&client, &format!("SELECT count() FROM {db}.requests FINAL")).await;
        // ClickHouse writes a block to the table, then to its materialized view:
        // a reader in between sees rows that the daily roll-up does not have yet.
        let raw: u64 = scalar(&client, &format!("SELECT count() FROM {db}.requests")).await;
        let rolled: u64 = scalar(
            &client,
            &format!("SELECT toUInt64(sum(requests)) FROM {db}.daily_spend"),
        )
        .await;
        if (count >= n && rolled >= raw) || Instant::now() > until {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_requests_make_n_rows_with_the_mocks_tokens_and_the_price_tables_cost() {
    let stack = accounting_stack().await;
    let (mut prompt, mut completion) = (0u64, 0u64);
    for i in 0..20u64 {
        let mut b = body("gpt-4o-mini", &format!("row {i} [[mock:tokens={}]]", 3 + i));
        if i % 4 == 0 {
            b["stream"] = json!(true);
            b["stream_options"] = json!({"include_usage": true});
            let text = stack.chat(&b).send().await.unwrap().text().await.unwrap();
            let line = text.lines().rfind(|l| l.contains("\"usage\":{")).unwrap();
            let v: Value = serde_json::from_str(&line[6..]).unwrap();
            prompt += v["usage"]["prompt_tokens"].as_u64().unwrap();
            completion += v["usage"]["completion_tokens"].as_u64().unwrap();
        } else {
            let v: Value = stack.chat(&b).send().await.unwrap().json().await.unwrap();
            prompt += v["usage"]["prompt_tokens"].as_u64().unwrap();
            completion += v["usage"]["completion_tokens"].as_u64().unwrap();
        }
    }
    assert_eq!(wait_rows(&stack, 20).await, 20);
    let (client, db) = ch(&stack);
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Totals {
        rows: u64,
        input: u64,
        cached: u64,
        output: u64,
        cost: String,
        billed: String,
        providers: u64,
    }
    let t: Totals = client
        .query(&format!(
            "SELECT count() AS rows, sum(input_tokens) AS input, sum(cached_input_tokens) AS cached, \
             sum(output_tokens) AS output, toString(sum(assumeNotNull(cost))) AS cost, toString(sum(assumeNotNull(billed))) AS billed, \
             uniqExact(provider) AS providers FROM {db}.requests FINAL WHERE status = 'ok'"
        ))
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(t.rows, 20);
    assert_eq!(t.providers, 1);
    assert_eq!(t.input + t.cached, prompt);
    assert_eq!(t.output, completion);
    // $0.15 in / $0.60 out per million tokens; +20 % billed; no cached tokens from the mock.
    let cost_nanos = t.input * 150 + t.output * 600;
    let parsed = sy_config::price::parse_nanos(&t.cost).unwrap();
    assert_eq!(parsed, cost_nanos as i64);
    let billed = sy_config::price::parse_nanos(&t.billed).unwrap();
    assert!(
        (billed - parsed * 12 / 10).abs() <= 20,
        "billed {billed} vs cost {parsed} +20 %"
    );

    // The daily roll-up agrees with the rows.
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Daily {
        requests: u64,
        cost: String,
    }
    let d: Daily = client
        .query(&format!(
            "SELECT sum(requests) AS requests, toString(sum(cost_sum)) AS cost FROM {db}.daily_spend"
        ))
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(d.requests, 20);
    assert_eq!(
        sy_config::price::parse_nanos(&d.cost).unwrap(),
        cost_nanos as i64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_published_twice_is_counted_once() {
    let stack = accounting_stack().await;
    let resp = stack
        .chat(&body("gpt-4o-mini", "once"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(wait_rows(&stack, 1).await, 1);
    // Re-publish the stored event, as a worker retrying its publish would.
    let (client, db) = ch(&stack);
    let event_id: String = client
        .query(&format!("SELECT event_id FROM {db}.requests"))
        .fetch_one()
        .await
        .unwrap();
    let nats = sy_test_support::nats().await;
    let js = async_nats::jetstream::new(nats);
    let subjects = sy_protocol::Subjects::new(&stack.namespace);
    let stream = js.get_stream(subjects.usage_stream()).await.unwrap();
    let raw = stream
        .get_last_raw_message_by_subject(&subjects.usage())
        .await
        .unwrap();
    let event: UsageEvent = serde_json::from_slice(&raw.payload).unwrap();
    assert_eq!(event.event_id, event_id);
    for _ in 0..2 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, event.event_id.as_str());
        js.publish_with_headers(subjects.usage(), headers, raw.payload.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let rows: u64 = scalar(&client, &format!("SELECT count() FROM {db}.requests")).await;
    assert_eq!(rows, 1, "duplicates must not reach the table");
    let daily: u64 = scalar(
        &client,
        &format!("SELECT sum(requests) FROM {db}.daily_spend"),
    )
    .await;
    assert_eq!(daily, 1);
}

/// `switchyard_accounting_pending` reads the shared consumer: the events
/// JetStream holds for it that no accounting process stored yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_events_are_what_the_accounting_consumer_has_not_stored() {
    let namespace = sy_test_support::unique_namespace();
    let config = sy_config::Config::from_toml(
        &format!(
            "[nats]\nurl = \"{}\"\nnamespace = \"{namespace}\"\n",
            sy_test_support::nats_url()
        ),
        &sy_config::MapEnv::default(),
    )
    .unwrap();
    let bus = sy_bus::Bus::from_client(sy_test_support::nats().await, &config.nats);
    assert_eq!(
        sy_accounting::pending_events(&bus).await,
        None,
        "no stream yet"
    );
    bus.ensure_usage_stream(Duration::from_secs(600))
        .await
        .unwrap();
    let js = bus.jetstream();
    let stream = js.get_stream(bus.subjects().usage_stream()).await.unwrap();
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(sy_accounting::CONSUMER.into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sy_accounting::pending_events(&bus).await, Some(0));
    for i in 0..3 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("pending-{i}").as_str(),
        );
        js.publish_with_headers(bus.subjects().usage(), headers, "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    assert_eq!(sy_accounting::pending_events(&bus).await, Some(3));
}

/// Every `sql` block of docs/analytics.md runs on real rows and returns some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_analytics_query_runs_on_real_rows() {
    let stack = accounting_stack().await;
    for prompt in [
        "a [[mock:tokens=4]]",
        "b [[mock:status=500]]",
        "c [[mock:tool_call=f]]",
    ] {
        let _ = stack
            .chat(&body("gpt-4o-mini", prompt))
            .header("x-switchyard-tags", "feature=search, tier=free")
            .send()
            .await
            .unwrap()
            .bytes()
            .await;
    }
    assert_eq!(wait_rows(&stack, 3).await, 3);
    let (_, db) = ch(&stack);
    let doc =
        std::fs::read_to_string(sy_test_support::repo_root().join("docs/analytics.md")).unwrap();
    let queries: Vec<String> = doc
        .split("```sql")
        .skip(1)
        .map(|block| {
            block
                .split("```")
                .next()
                .unwrap()
                .trim()
                .replace("switchyard.", &format!("{db}."))
        })
        .collect();
    assert!(queries.len() >= 6, "found {} queries", queries.len());
    let http = sy_test_support::http();
    for q in queries {
        let resp = http
            .post(sy_test_support::clickhouse_url())
            .body(format!("{q}\nFORMAT TSV"))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "query failed: {text}\n{q}");
        assert!(!text.trim().is_empty(), "query returned no rows:\n{q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_endpoint_shows_the_callers_own_usage_only() {
    use crate::stack::{KEY, OTHER_KEY};
    let stack = accounting_stack().await;
    for i in 0..3 {
        let b = body("gpt-4o-mini", &format!("mine {i} [[mock:tokens=10]]"));
        assert_eq!(stack.chat(&b).send().await.unwrap().status(), 200);
    }
    let other = stack
        .http
        .post(stack.url("/v1/chat/completions"))
        .bearer_auth(OTHER_KEY)
        .json(&body("gpt-4.1", "theirs"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert_eq!(wait_rows(&stack, 4).await, 4);

    let get = |key: &'static str, query: &'static str| {
        stack
            .http
            .get(stack.url(&format!("/v1/usage{query}")))
            .bearer_auth(key)
            .send()
    };
    let v: Value = get(KEY, "?group_by=model")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{v}");
    assert_eq!(data[0]["group"], "gpt-4o-mini");
    assert_eq!(data[0]["requests"], 3);
    assert_eq!(data[0]["output_tokens"], 30);
    let cost = sy_config::price::parse_nanos(data[0]["cost"].as_str().unwrap()).unwrap();
    let input = data[0]["input_tokens"].as_u64().unwrap() as i64;
    assert_eq!(cost, input * 150 + 30 * 600);
    assert_eq!(data[0]["unpriced_attempts"], 0);

    let v: Value = get(OTHER_KEY, "?group_by=day")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["requests"], 1);
    assert_eq!(
        data[0]["unpriced_attempts"], 1,
        "gpt-4.1 has no price in this config: unknown, not zero"
    );
    assert_eq!(v["key_id"], "other");

    for bad in [
        "?start=yesterday",
        "?group_by=week",
        "?start=2026-11-23&end=2026-11-01",
        "?foo=1",
    ] {
        let resp = get(KEY, bad).await.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        let e: Value = resp.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid_request");
    }
    assert_eq!(
        stack
            .http
            .get(stack.url("/v1/usage"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

/// ClickHouse goes away for 30 s under steady traffic (a request every 100 ms)
/// and comes back: every event arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_outage_under_traffic_loses_nothing() {
    const OUTAGE: Duration = Duration::from_secs(30);
    let mut server = sy_test_support::ClickhouseServer::start().await;
    let stack = Stack::start_with(StackOptions {
        clickhouse: true,
        clickhouse_url: Some(server.url()),
        ..Default::default()
    })
    .await;
    let send = |i: usize| {
        let req = stack
            .chat(&body(
                "gpt-4o-mini",
                &format!("outage {i} [[mock:tokens=4]]"),
            ))
            .timeout(Duration::from_secs(10));
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200, "requests do not depend on ClickHouse");
        }
    };
    for i in 0..10 {
        send(i).await;
    }
    assert_eq!(wait_rows(&stack, 10).await, 10);
    server.stop();
    let down_since = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut sent = 10;
    while down_since.elapsed() < OUTAGE {
        tick.tick().await;
        send(sent).await;
        sent += 1;
    }
    assert!(sent > 200, "traffic kept flowing during the outage: {sent}");
    server.restart().await;
    let n = u64::try_from(sent).unwrap();
    assert_eq!(
        wait_rows(&stack, n).await,
        n,
        "events kept while ClickHouse was down arrive"
    );
    let (client, db) = ch(&stack);
    let raw: u64 = scalar(&client, &format!("SELECT count() FROM {db}.requests")).await;
    assert_eq!(raw, n, "and none twice, even before merges");
}

/// An accounting process killed with a batch in hand, then another started:
/// no row lost, none doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounting_killed_mid_batch_loses_and_doubles_nothing() {
    use std::process::{Command, Stdio};
    // The stack itself runs no accounting; separate processes do.
    let stack = Stack::start().await;
    sy_test_support::require_clickhouse().await;
    let db = sy_test_support::unique_database();
    // The first process holds its batch for 20 s, so the kill always lands mid-batch;
    // the second flushes quickly.
    let config_with = |max_wait: &str| {
        format!(
            "{}\n[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n\n[accounting]\nmax_rows = 1000\nmax_wait = \"{max_wait}\"\nack_wait = \"2s\"\n",
            stack.config_text,
            sy_test_support::clickhouse_url()
        )
    };
    let config = config_with("20s");
    let ch_config = sy_config::Config::from_toml(&config, &sy_config::MapEnv::default())
        .unwrap()
        .clickhouse
        .unwrap();
    sy_accounting::migrate(&ch_config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let slow = dir.path().join("slow.toml");
    std::fs::write(&slow, &config).unwrap();
    let quick = dir.path().join("quick.toml");
    std::fs::write(&quick, config_with("200ms")).unwrap();
    let spawn = |path: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("--config")
            .arg(path)
            .arg("accounting")
            .env("SWITCHYARD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = spawn(&slow);
    for i in 0..30 {
        let resp = stack
            .chat(&body("gpt-4o-mini", &format!("batch {i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Wait until the first process holds all 30 events unacked in its batch, then kill it.
    let js = async_nats::jetstream::new(sy_test_support::nats().await);
    let usage_stream = js
        .get_stream(sy_protocol::Subjects::new(&stack.namespace).usage_stream())
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let mut held = 0;
    while Instant::now() < until {
        if let Ok(info) = usage_stream.consumer_info(sy_accounting::CONSUMER).await {
            held = info.num_ack_pending;
            if held == 30 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(held, 30, "the first process should hold the batch");
    first.kill().unwrap();
    first.wait().unwrap();
    let client = sy_accounting::client(&ch_config);
    let before: u64 = scalar(&client, &format!("SELECT count() FROM {db}.requests")).await;
    assert_eq!(before, 0, "killed before its batch was inserted");
    let mut second = spawn(&quick);
    let until = Instant::now() + Duration::from_secs(20);
    let mut rows = 0;
    while Instant::now() < until {
        rows = scalar(&client, &format!("SELECT count() FROM {db}.requests")).await;
        if rows >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let any late redelivery show up before counting doubles.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let raw: u64 = scalar(&client, &format!("SELECT count() FROM {db}.requests")).await;
    let distinct: u64 = scalar(
        &client,
        &format!("SELECT uniqExact(event_id) FROM {db}.requests"),
    )
    .await;
    second.kill().unwrap();
    second.wait().unwrap();
    let _ = client
        .query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute()
        .await;
    assert!(rows >= 30, "rows never arrived: {rows}");
    assert_eq!(distinct, 30, "no event lost");
    assert_eq!(raw, 30, "no event doubled");
}

/// The migrations and every query of docs/analytics.md also run on current
/// ClickHouse (in-process through PyPI's chdb-core), not only on Debian's 18.16.
#[test]
fn schema_and_queries_run_on_current_clickhouse() {
    if let Ok(why) = std::env::var("SY_CHDB_UNAVAILABLE") {
        eprintln!("SKIPPED: current-ClickHouse check not run: {why}");
        return;
    }
    let python = std::env::var("SY_TEST_PYTHON").unwrap_or_else(|_| {
        sy_test_support::repo_root()
            .join(".venv/bin/python")
            .display()
            .to_string()
    });
    let root = sy_test_support::repo_root();
    let out = std::process::Command::new(&python)
        .arg(root.join("tests/sql/chdb_check.py"))
        .arg(&root)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {python} (SY_TEST_PYTHON): {e}. Run scripts/test.sh.")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "on current ClickHouse:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("applied 0002_daily_spend.sql"), "{stdout}");
    assert!(stdout.contains("analytics queries"), "{stdout}");
}

/// Cached prompt tokens (OpenAI convention: included in prompt_tokens) land in
/// their own column, priced at the cached rate; a stream the client cut is a row
/// with estimated output tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_tokens_are_normalised_and_cut_streams_are_rows() {
    use futures::StreamExt;
    let stack = accounting_stack().await;
    let b = body(
        "gpt-4o-mini",
        "one two three four five six seven [[mock:tokens=10,cached_tokens=6]]",
    );
    let v: Value = stack.chat(&b).send().await.unwrap().json().await.unwrap();
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 6);

    let mut cut = body("gpt-4o-mini", "a long one [[mock:tokens=200,delay_ms=20]]");
    cut["stream"] = json!(true);
    let mut s = stack.chat(&cut).send().await.unwrap().bytes_stream();
    for _ in 0..3 {
        s.next().await.unwrap().unwrap();
    }
    drop(s);
    assert_eq!(wait_rows(&stack, 2).await, 2);

    let (client, db) = ch(&stack);
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Row {
        input_tokens: u64,
        cached_input_tokens: u64,
        output_tokens: u64,
        output_tokens_source: String,
        status: String,
        cost: String,
        client_disconnected: u8,
    }
    let rows: Vec<Row> = client
        .query(&format!(
            "SELECT input_tokens, cached_input_tokens, output_tokens, output_tokens_source, status, \
             toString(assumeNotNull(cost)) AS cost, client_disconnected \
             FROM {db}.requests FINAL ORDER BY received_ms"
        ))
        .fetch_all()
        .await
        .unwrap();
    let cached = &rows[0];
    assert_eq!(cached.cached_input_tokens, 6);
    assert_eq!(
        cached.input_tokens + cached.cached_input_tokens,
        prompt,
        "every prompt token in one class"
    );
    assert_eq!(cached.output_tokens_source, "provider");
    // $0.15 uncached, $0.075 cached, $0.60 output per million tokens.
    let expected = (cached.input_tokens * 150 + 6 * 75 + 10 * 600) as i64;
    assert_eq!(
        sy_config::price::parse_nanos(&cached.cost).unwrap(),
        expected
    );

    let cut = &rows[1];
    assert_eq!(cut.status, "cancelled");
    assert_eq!(cut.client_disconnected, 1);
    assert_eq!(cut.output_tokens_source, "estimated");
    assert!(cut.input_tokens > 0 && cut.output_tokens > 0 && cut.output_tokens < 200);
}

/// Anthropic's convention (input excludes cache reads and writes) lands in the
/// same columns as OpenAI's: input + cached + cache writes is the whole prompt,
/// each priced at its own rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_cache_reads_and_writes_are_normalised_and_priced() {
    let stack = accounting_stack().await;
    let b = body(
        "claude-sonnet-4-5",
        "one two three four five six seven [[mock:tokens=10,cached_tokens=4,cache_write=3]]",
    );
    let v: Value = stack.chat(&b).send().await.unwrap().json().await.unwrap();
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    assert!(
        v["usage"]["prompt_tokens_details"]
            .get("cache_write_tokens")
            .is_none(),
        "an OpenAI client sees OpenAI's fields only: {v}"
    );
    assert_eq!(wait_rows(&stack, 1).await, 1);
    let (client, db) = ch(&stack);
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Row {
        provider: String,
        input_tokens: u64,
        cached_input_tokens: u64,
        cache_write_tokens: u64,
        output_tokens: u64,
        cost: String,
    }
    let row: Row = client
        .query(&format!(
            "SELECT provider, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, \
             toString(assumeNotNull(cost)) AS cost FROM {db}.requests FINAL"
        ))
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(row.provider, "anthropic");
    assert_eq!((row.cached_input_tokens, row.cache_write_tokens), (4, 3));
    assert_eq!(
        row.input_tokens + row.cached_input_tokens + row.cache_write_tokens,
        prompt,
        "no prompt token counted twice or missed"
    );
    assert_eq!(row.output_tokens, 10);
    // $3 input, $0.30 cache read, $3.75 cache write, $15 output per million tokens.
    let expected = (row.input_tokens * 3000 + 4 * 300 + 3 * 3750 + 10 * 15000) as i64;
    assert_eq!(sy_config::price::parse_nanos(&row.cost).unwrap(), expected);
}

/// Prompt caching end to end: `cache_control` breakpoints from an Anthropic
/// client (and from an OpenAI client, OpenRouter-style) reach the Anthropic
/// target, whose cache (the mock's, Anthropic's rules) writes the prefix on the
/// first call and reads it on the next; usage and ClickHouse rows say so, and a
/// request without breakpoints caches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_breakpoints_reach_anthropic_and_its_cache_is_billed() {
    let stack = accounting_stack().await;
    let document = "A long reference document the client wants cached. ".repeat(40);
    let messages_body = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 16,
        "system": [
            {"type": "text", "text": "You answer questions about the document."},
            {"type": "text", "text": document, "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [{"role": "user", "content": "What is it about?"}]
    });
    let mut usage = Vec::new();
    for _ in 0..2 {
        let r = stack.messages(&messages_body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        usage.push(v["usage"].clone());
    }
    let written = usage[0]["cache_creation_input_tokens"].as_u64().unwrap();
    assert!(
        written > 320,
        "the document (320 words) is written to the cache: {usage:?}"
    );
    assert_eq!(usage[0]["cache_read_input_tokens"], 0, "{usage:?}");
    assert_eq!(usage[1]["cache_read_input_tokens"], written, "{usage:?}");
    assert_eq!(usage[1]["cache_creation_input_tokens"], 0, "{usage:?}");
    assert_eq!(usage[0]["input_tokens"], usage[1]["input_tokens"]);

    // An OpenAI client marks the same kind of prefix on a text part.
    let chat_body = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 16,
        "messages": [
            {"role": "system", "content": [
                {"type": "text", "text": document, "cache_control": {"type": "ephemeral"}}
            ]},
            {"role": "user", "content": "Summarise it."}
        ]
    });
    let mut cached = Vec::new();
    for _ in 0..2 {
        let v = json_of(stack.chat(&chat_body)).await;
        cached.push(
            v["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0),
        );
    }
    assert_eq!(cached[0], 0, "first call writes");
    assert!(cached[1] > 320, "second call reads the prefix: {cached:?}");

    // Without breakpoints nothing is cached, however often it is sent.
    let plain = json!({"model": "claude-sonnet-4-5", "max_tokens": 16,
        "system": document, "messages": [{"role": "user", "content": "Again?"}]});
    for _ in 0..2 {
        let v = json_of(stack.messages(&plain)).await;
        assert_eq!(v["usage"]["cache_creation_input_tokens"], 0, "{v}");
        assert_eq!(v["usage"]["cache_read_input_tokens"], 0, "{v}");
    }

    assert_eq!(wait_rows(&stack, 6).await, 6);
    let (client, db) = ch(&stack);
    let writes: u64 = scalar(
        &client,
        &format!("SELECT sum(cache_write_tokens) FROM {db}.requests FINAL"),
    )
    .await;
    let reads: u64 = scalar(
        &client,
        &format!("SELECT sum(cached_input_tokens) FROM {db}.requests FINAL"),
    )
    .await;
    assert_eq!(writes, written + cached[1], "both prefixes written once");
    assert_eq!(reads, written + cached[1], "and read once each");
}

/// Tags from the header and the body's `metadata` reach every attempt's row
/// (sorted, the header winning); malformed or too many tags are a 400 in
/// the client's format, before anything is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_from_the_header_and_metadata_are_on_the_row_and_bad_ones_are_refused() {
    let stack = accounting_stack().await;
    let mut b = body("gpt-4o-mini", "tagged [[mock:tokens=3]]");
    b["metadata"] = serde_json::json!({"experiment": "b", "tier": "pro"});
    let r = stack
        .chat(&b)
        .header("x-switchyard-tags", "feature=search, tier=free")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-switchyard-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // Messages: tags from the header alone.
    let m = stack
        .http
        .post(stack.url("/v1/messages"))
        .bearer_auth(crate::stack::KEY)
        .header("x-switchyard-tags", "feature=chat")
        .json(
            &serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi [[mock:tokens=2]]"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    assert_eq!(wait_rows(&stack, 2).await, 2);
    let (client, db) = ch(&stack);
    assert_eq!(
        row_tags(&stack, &id).await,
        (
            "experiment,feature,tier".to_owned(),
            "b,search,free".to_owned()
        )
    );
    let by_feature: Vec<(String, u64)> = client
        .query(&format!(
            "SELECT tag_values[indexOf(tag_keys, 'feature')] AS f, count() AS n \
             FROM {db}.requests FINAL GROUP BY f ORDER BY f"
        ))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        by_feature,
        [("chat".to_owned(), 1), ("search".to_owned(), 1)]
    );
    // The key's own usage grouped by a tag's value.
    let usage = |q: &'static str| {
        stack
            .http
            .get(stack.url(&format!("/v1/usage{q}")))
            .bearer_auth(crate::stack::KEY)
            .send()
    };
    let v: Value = usage("?group_by=tag:feature")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["group_by"], "tag:feature");
    let groups: Vec<(&str, u64)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["group"].as_str().unwrap(),
                g["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(groups, [("chat", 1), ("search", 1)]);
    let v: Value = usage("?group_by=tag:tier")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tiers: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    // The Messages call had no tier: grouped as ''.
    assert_eq!(tiers, ["", "free"]);
    let r = usage("?group_by=tag:bad%20key").await.unwrap();
    assert_eq!(r.status(), 400);

    // Refused, naming where the bad tag came from, in each client's format.
    let bad = |tags: String| {
        stack
            .chat(&body("gpt-4o-mini", "refused"))
            .header("x-switchyard-tags", tags)
            .send()
    };
    let r = bad("feature".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "x-switchyard-tags");
    let many: Vec<String> = (0..17).map(|i| format!("k{i}=v")).collect();
    let r = bad(many.join(",")).await.unwrap();
    assert_eq!(r.status(), 400);
    let m = stack
        .http
        .post(stack.url("/v1/messages"))
        .bearer_auth(crate::stack::KEY)
        .header("x-switchyard-tags", "bad key=1")
        .json(
            &serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 400);
    let e: Value = m.json().await.unwrap();
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    // Nothing refused was published: still two rows.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(wait_rows(&stack, 2).await, 2);
    // Metadata that is not a tag is the provider's business, never refused:
    // served, with only its valid entries as tags.
    let mut b = body("gpt-4o-mini", "served [[mock:tokens=2]]");
    b["metadata"] = serde_json::json!({"n": 7, "customer id": "x", "exp": "c"});
    let r = stack.chat(&b).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-switchyard-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(wait_rows(&stack, 3).await, 3);
    assert_eq!(row_tags(&stack, &id).await.0, "exp");
}

/// The tags on `request_id`'s row: its keys and its values, comma-joined.
async fn row_tags(stack: &Stack, request_id: &str) -> (String, String) {
    let (client, db) = ch(stack);
    client
        .query(&format!(
            "SELECT arrayStringConcat(tag_keys, ','), arrayStringConcat(tag_values, ',') \
             FROM {db}.requests FINAL WHERE request_id = ?"
        ))
        .bind(request_id)
        .fetch_one()
        .await
        .unwrap()
}
