//! OpenTelemetry traces (issue 19): one request is one trace across the
//! ingress, the JetStream hop and each worker (separate processes here, so
//! the trace context can only have crossed in the NATS headers), with every
//! retry, fallback and mid-stream recovery a `chat {model}` span, exported
//! over OTLP/HTTP to a collector stand-in, and the trace id in the log lines
//! and the ClickHouse rows.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::stack::{Stack, StackOptions, body};

/// What an OTLP/HTTP collector received: the JSON bodies of `/v1/traces`.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Value>>>);

impl Collector {
    async fn start(self) -> SocketAddr {
        let store = self.0.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |b: axum::body::Bytes| {
                let store = store.clone();
                async move {
                    let v: Value = serde_json::from_slice(&b).expect("OTLP/JSON body");
                    store.lock().unwrap().push(v);
                    axum::Json(json!({}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// Every span received so far, flattened.
    fn spans(&self) -> Vec<Value> {
        let bodies = self.0.lock().unwrap();
        let mut out = Vec::new();
        for b in bodies.iter() {
            for rs in b["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    out.extend(ss["spans"].as_array().into_iter().flatten().cloned());
                }
            }
        }
        out
    }

    /// The spans of `trace_id` once `ready` says they are all there (the
    /// batch processors export every few seconds).
    async fn trace(&self, trace_id: &str, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let spans: Vec<Value> = self
                .spans()
                .into_iter()
                .filter(|s| s["traceId"] == trace_id)
                .collect();
            if ready(&spans) || Instant::now() > until {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A span attribute's value (string or int), as text.
fn attr(span: &Value, key: &str) -> Option<String> {
    let a = span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?;
    let v = &a["value"];
    v["stringValue"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| v["intValue"].as_str().map(str::to_owned))
        .or_else(|| v["intValue"].as_i64().map(|i| i.to_string()))
        .or_else(|| {
            v["arrayValue"]["values"].as_array().map(|vs| {
                vs.iter()
                    .filter_map(|x| x["stringValue"].as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
        })
}

fn kind(span: &Value) -> i64 {
    span["kind"].as_i64().unwrap_or(-1)
}

const SERVER: i64 = 2;
const CLIENT: i64 = 3;
const PRODUCER: i64 = 4;
const CONSUMER: i64 = 5;

fn by_kind(spans: &[Value], k: i64) -> Vec<&Value> {
    spans.iter().filter(|s| kind(s) == k).collect()
}

fn traced_stack_options(collector: SocketAddr) -> StackOptions {
    StackOptions {
        clickhouse: true,
        split_workers: 2,
        retries: 1,
        log: "sy_ingress=debug,sy_worker=debug,warn",
        sections: format!(
            "[tracing]\nenabled = true\nendpoint = \"http://{collector}/v1/traces\"\nprotocol = \"http/json\"\nservice_name = \"switchyard-test\"\n"
        ),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_across_the_queue_hop_retries_and_fallbacks() {
    let collector = Collector::default();
    let addr = collector.clone().start().await;
    let mut stack = Stack::start_with(traced_stack_options(addr)).await;
    stack.wait_workers_pulling(2).await;

    // The client's trace is continued: its span is the SERVER span's parent.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let prompt = "a secret prompt [[mock:status=500,only=openai]]";
    let resp = stack
        .chat(&body("chain", prompt))
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-switchyard-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // The other requests go now: the spans of all three arrive in one export.
    // A stream cut mid-way and recovered on the fallback: one trace, the
    // recovery's call says why it was made.
    let recovered_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut b = body(
        "chain",
        "tell me [[mock:tokens=20]] [[mock:cut_after=5,only=openai]]",
    );
    b["stream"] = json!(true);
    let resp = stack
        .chat(&b)
        .header(
            "traceparent",
            format!("00-{recovered_trace}-b7ad6b7169203331-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    // Every log line of a traced request names its trace.
    let failed_trace = "5b8aa5a2d2c872e8321cf37308d69df2";
    let resp = stack
        .chat(&body("no-such-model", "hi"))
        .header(
            "traceparent",
            format!("00-{failed_trace}-a2fb4a1d1a96d312-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let spans = collector
        .trace(client_trace, |s| {
            by_kind(s, CLIENT).len() >= 3
                && by_kind(s, CONSUMER).len() >= 2
                && !by_kind(s, PRODUCER).is_empty()
                && !by_kind(s, SERVER).is_empty()
        })
        .await;
    let names: Vec<_> = spans
        .iter()
        .map(|s| s["name"].as_str().unwrap_or(""))
        .collect();
    println!("spans: {names:?}");

    let server = by_kind(&spans, SERVER);
    assert_eq!(server.len(), 1, "{names:?}");
    let server = server[0];
    assert_eq!(server["name"], "POST /v1/chat/completions");
    assert_eq!(server["parentSpanId"], client_span);
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("200")
    );

    let producer = by_kind(&spans, PRODUCER);
    assert_eq!(producer.len(), 1, "the ingress published once: {names:?}");
    assert_eq!(producer[0]["parentSpanId"], server["spanId"]);
    assert_eq!(
        attr(producer[0], "messaging.system").as_deref(),
        Some("nats")
    );

    // The openai worker's handling continues the publish; the anthropic
    // worker's continues the openai worker's (its fallback's republish).
    let consumers = by_kind(&spans, CONSUMER);
    assert_eq!(consumers.len(), 2, "{names:?}");
    let first = consumers
        .iter()
        .find(|c| c["parentSpanId"] == producer[0]["spanId"])
        .expect("a worker span under the publish");
    let second = consumers
        .iter()
        .find(|c| c["parentSpanId"] == first["spanId"])
        .expect("the fallback's worker span under the first worker's");
    for c in &consumers {
        assert_eq!(
            attr(c, "switchyard.request_id").as_deref(),
            Some(request_id.as_str())
        );
    }

    // Three provider calls: openai, its retry, then anthropic, each a CLIENT
    // span with the GenAI attributes under its worker's span.
    let mut calls = by_kind(&spans, CLIENT);
    calls.sort_by_key(|c| attr(c, "switchyard.attempt"));
    let path: Vec<_> = calls
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                attr(c, "gen_ai.provider.name").unwrap_or_default(),
                attr(c, "error.type"),
            )
        })
        .collect();
    assert_eq!(
        path,
        [
            (
                "chat gpt-4o-mini".to_owned(),
                "openai".to_owned(),
                Some("provider_error".to_owned())
            ),
            (
                "chat gpt-4o-mini".to_owned(),
                "openai".to_owned(),
                Some("provider_error".to_owned())
            ),
            (
                "chat claude-sonnet-4-5".to_owned(),
                "anthropic".to_owned(),
                None
            ),
        ]
    );
    assert_eq!(calls[0]["parentSpanId"], first["spanId"]);
    assert_eq!(calls[1]["parentSpanId"], first["spanId"]);
    assert_eq!(calls[2]["parentSpanId"], second["spanId"]);
    assert_eq!(
        attr(calls[1], "switchyard.attempt.reason").as_deref(),
        Some("retry after provider_error")
    );
    let ok = calls[2];
    assert_eq!(attr(ok, "gen_ai.operation.name").as_deref(), Some("chat"));
    assert_eq!(
        attr(ok, "gen_ai.request.model").as_deref(),
        Some("claude-sonnet-4-5")
    );
    assert!(attr(ok, "gen_ai.response.model").is_some_and(|m| m.starts_with("claude")));
    assert!(attr(ok, "gen_ai.usage.input_tokens").is_some_and(|n| n.parse::<u64>().unwrap() > 0));
    assert!(attr(ok, "gen_ai.usage.output_tokens").is_some_and(|n| n.parse::<u64>().unwrap() > 0));
    assert!(attr(ok, "gen_ai.response.finish_reasons").is_some_and(|f| !f.is_empty()));
    // Content is not recorded unless the config says so.
    let all = serde_json::to_string(&spans).unwrap();
    assert!(
        !all.contains("secret prompt"),
        "the prompt leaked into a span"
    );
    assert!(!all.contains("gen_ai.input.messages"));

    let spans = collector
        .trace(recovered_trace, |s| {
            by_kind(s, CLIENT).len() >= 2 && !by_kind(s, SERVER).is_empty()
        })
        .await;
    let calls = by_kind(&spans, CLIENT);
    assert_eq!(calls.len(), 2, "{spans:?}");
    assert!(
        calls.iter().any(|c| attr(c, "switchyard.attempt.reason")
            .is_some_and(|r| r.starts_with("mid-stream recovery"))),
        "{calls:?}"
    );

    // The usage rows name their trace.
    let c = stack.clickhouse.as_ref().unwrap();
    let ch = sy_accounting::client(c);
    let sql = format!(
        "SELECT DISTINCT trace_id FROM {}.requests FINAL WHERE toString(request_id) = '{request_id}'",
        c.database
    );
    let until = Instant::now() + Duration::from_secs(15);
    let ids: Vec<String> = loop {
        let ids: Vec<String> = ch.query(&sql).fetch_all().await.unwrap();
        let rows: u64 = ch
            .query(&format!(
                "SELECT count() FROM {}.requests FINAL WHERE toString(request_id) = '{request_id}'",
                c.database
            ))
            .fetch_one()
            .await
            .unwrap();
        if rows >= 3 || Instant::now() > until {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ids, [client_trace]);

    // (The failed request's spans and log lines.)
    let spans = collector
        .trace(failed_trace, |s| !by_kind(s, SERVER).is_empty())
        .await;
    let server = by_kind(&spans, SERVER);
    assert_eq!(
        attr(server[0], "error.type").as_deref(),
        Some("caller"),
        "{spans:?}"
    );
    let log = stack.stop_and_read_log();
    let failed: Vec<_> = log
        .lines()
        .filter(|l| l.contains("Request failed."))
        .collect();
    assert!(!failed.is_empty(), "{log}");
    assert!(failed.iter().all(|l| l.contains("trace_id=")), "{failed:?}");
    assert!(
        failed.iter().any(|l| l.contains(failed_trace)),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_traceparent_a_new_trace_starts_and_content_is_recorded_only_when_asked() {
    let collector = Collector::default();
    let addr = collector.clone().start().await;
    let mut opts = traced_stack_options(addr);
    opts.sections.push_str("record_content = true\n");
    opts.split_workers = 1;
    let stack = Stack::start_with(opts).await;
    let resp = stack
        .chat(&body("gpt-4o-mini", "a recorded prompt"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let call = loop {
        let spans = collector.spans();
        if let Some(c) = spans.iter().find(|s| kind(s) == CLIENT) {
            break c.clone();
        }
        assert!(Instant::now() < until, "no CLIENT span exported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let trace_id = call["traceId"].as_str().unwrap();
    assert_eq!(trace_id.len(), 32);
    assert!(trace_id.bytes().all(|b| b.is_ascii_hexdigit()) && trace_id != "0".repeat(32));
    let input = attr(&call, "gen_ai.input.messages").expect("the prompt recorded");
    assert!(input.contains("a recorded prompt"), "{input}");
    let output = attr(&call, "gen_ai.output.messages").expect("the answer recorded");
    assert_eq!(
        output,
        answer["choices"][0]["message"]["content"].as_str().unwrap()
    );
    // The SERVER span of that request is the trace's root.
    let spans = collector
        .trace(trace_id, |s| !by_kind(s, SERVER).is_empty())
        .await;
    let server = by_kind(&spans, SERVER);
    assert_eq!(server.len(), 1);
    assert!(server[0]["parentSpanId"].as_str().unwrap_or("").is_empty());
}
