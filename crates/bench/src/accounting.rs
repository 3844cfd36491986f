//! `sy-accounting-bench`: accounting throughput and lag, with the real consumer
//! (`sy_accounting::run`) in-process against real NATS and ClickHouse.
//!
//! - throughput: N usage events are published to a fresh usage stream first; then
//!   the consumer starts and the clock runs until ClickHouse holds N rows.
//! - lag: the consumer runs while events are published at R per second for D
//!   seconds; an event's lag is from its publish until ClickHouse's row count
//!   (polled every 50 ms) covers it — "request finished → row visible".
//!
//! Prints one JSON line per mode.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use sy_config::{Config, MapEnv};
use sy_protocol::{ApiSurface, TokenSource, UsageEvent, UsageStatus, now_unix_ms};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(name = "sy-accounting-bench")]
struct Args {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    clickhouse: String,
    /// Events for the throughput run.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// accounting.max_rows.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// accounting.max_wait.
    #[arg(long, default_value = "1s")]
    max_wait: String,
    /// Events per second for the lag run.
    #[arg(long, default_value_t = 1000)]
    rate: usize,
    /// Seconds of the lag run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn event(i: usize) -> UsageEvent {
    let request_id = Uuid::now_v7();
    let now = now_unix_ms();
    UsageEvent {
        event_id: UsageEvent::event_id_of(request_id, 1),
        search_units: 0,
        output_images: 0,
        audio_seconds: 0,
        input_characters: 0,
        request_id,
        attempt: 1,
        received_unix_ms: now,
        dispatched_unix_ms: now,
        first_token_unix_ms: Some(now),
        finished_unix_ms: now,
        key_id: format!("key-{}", i % 50),
        org_id: None,
        project_id: None,
        ingress_id: "bench".into(),
        worker_id: "bench".into(),
        api: ApiSurface::ChatCompletions,
        model: "gpt-4o-mini".into(),
        class: None,
        route: None,
        strategy: None,
        target_rank: None,
        provider: "openai".into(),
        upstream_model: "gpt-4o-mini".into(),
        served_model: None,
        stream: i.is_multiple_of(2),
        status: UsageStatus::Ok,
        error_code: None,
        provider_status: None,
        finish_reason: Some("stop".into()),
        tokens: sy_protocol::TokenUsage {
            input_tokens: 100 + (i % 900) as u64,
            output_tokens: 50,
            ..Default::default()
        },
        input_tokens_source: TokenSource::Provider,
        output_tokens_source: TokenSource::Provider,
        cost_nanos: Some(45_000),
        billed_nanos: Some(54_000),
        price_version: Some(0),
        multiplier_ppb: Some(1_200_000_000),
        plan: None,
        queue_wait_ms: 1,
        ttft_ms: Some(5),
        latency_ms: 20,
        fallback_reason: None,
        client_disconnected: false,
        batch_id: None,
        limits: None,
        trace_id: None,
        tags: Vec::new(),
        cache_hit: false,
        pipeline_run: None,
        pipeline_step: None,
    }
}

struct Env {
    config: Arc<Config>,
    bus: sy_bus::Bus,
    ch: clickhouse::Client,
    db: String,
}

async fn setup(args: &Args, name: &str) -> anyhow::Result<Env> {
    let db = format!("bench_{name}");
    let text = format!(
        "[nats]\nurl = \"{}\"\nnamespace = \"bench-{name}\"\n[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n[accounting]\nmax_rows = {}\nmax_wait = \"{}\"\n",
        args.nats, args.clickhouse, args.batch, args.max_wait
    );
    let config = Arc::new(Config::from_toml(&text, &MapEnv::default())?);
    let chc = config
        .clickhouse
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no clickhouse"))?;
    let ch = sy_accounting::client(&chc);
    ch.query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute()
        .await?;
    sy_accounting::migrate(&chc).await?;
    let bus = sy_bus::Bus::connect(&config.nats, "sy-accounting-bench").await?;
    let _ = bus
        .jetstream()
        .delete_stream(bus.subjects().usage_stream())
        .await;
    bus.ensure_usage_stream(Duration::from_secs(3600)).await?;
    Ok(Env {
        config,
        bus,
        ch,
        db,
    })
}

async fn count(env: &Env) -> anyhow::Result<u64> {
    Ok(env
        .ch
        .query(&format!("SELECT count() FROM {}.requests", env.db))
        .fetch_one()
        .await?)
}

async fn publish_all(env: &Env, events: &[UsageEvent]) -> anyhow::Result<()> {
    // Pipelined: keep many publish acks in flight.
    let js = env.bus.jetstream();
    let subject = env.bus.subjects().usage();
    let mut acks = Vec::with_capacity(events.len());
    for e in events {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, e.event_id.as_str());
        acks.push(
            js.publish_with_headers(subject.clone(), headers, serde_json::to_vec(e)?.into())
                .await?,
        );
        if acks.len() >= 4096 {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    for a in acks {
        a.await?;
    }
    Ok(())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

#[allow(clippy::print_stdout)]
fn report(line: serde_json::Value) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

async fn throughput(args: &Args) -> anyhow::Result<()> {
    let env = setup(args, "throughput").await?;
    let events: Vec<UsageEvent> = (0..args.events).map(event).collect();
    publish_all(&env, &events).await?;
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(sy_accounting::run(
        env.config.clone(),
        env.bus.clone(),
        shutdown.clone(),
    ));
    let n = args.events as u64;
    while count(&env).await? < n {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = task.await;
    let rows = count(&env).await?;
    report(json!({
        "mode": "throughput", "events": n, "rows": rows, "batch": args.batch,
        "seconds": (secs * 1000.0).round() / 1000.0, "events_per_s": (n as f64 / secs).round(),
    }));
    env.ch
        .query(&format!("DROP DATABASE IF EXISTS {}", env.db))
        .execute()
        .await?;
    Ok(())
}

async fn lag(args: &Args) -> anyhow::Result<()> {
    let env = setup(args, "lag").await?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sy_accounting::run(
        env.config.clone(),
        env.bus.clone(),
        shutdown.clone(),
    ));
    let total = args.rate * args.seconds as usize;
    let start = Instant::now();
    // Publisher: event k leaves at k / rate seconds; record its publish instant.
    let bus = env.bus.clone();
    let rate = args.rate;
    let publisher = tokio::spawn(async move {
        let mut sent = Vec::with_capacity(total);
        let js = bus.jetstream();
        let subject = bus.subjects().usage();
        for k in 0..total {
            let due = start + Duration::from_secs_f64(k as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
            let e = event(k);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, e.event_id.as_str());
            let ack = js
                .publish_with_headers(
                    subject.clone(),
                    headers,
                    serde_json::to_vec(&e).unwrap_or_default().into(),
                )
                .await;
            sent.push(start.elapsed().as_secs_f64());
            if let Ok(a) = ack {
                tokio::spawn(async move {
                    let _ = a.await;
                });
            }
        }
        sent
    });
    // Poller: (instant, rows visible).
    let mut seen: Vec<(f64, u64)> = Vec::new();
    loop {
        let c = count(&env).await?;
        seen.push((start.elapsed().as_secs_f64(), c));
        if c >= total as u64 || start.elapsed() > Duration::from_secs(args.seconds + 60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = publisher.await?;
    shutdown.cancel();
    let _ = task.await;
    // Rows are inserted in stream order, so event k is visible once count > k.
    let mut lags: Vec<f64> = Vec::with_capacity(total);
    let mut j = 0;
    for (k, t_sent) in sent.iter().enumerate() {
        while j < seen.len() && seen[j].1 <= k as u64 {
            j += 1;
        }
        if let Some((t_seen, _)) = seen.get(j) {
            lags.push((t_seen - t_sent).max(0.0) * 1000.0);
        }
    }
    lags.sort_by(f64::total_cmp);
    report(json!({
        "mode": "lag", "rate_per_s": args.rate, "seconds": args.seconds, "events": total,
        "visible": lags.len(), "batch": args.batch, "max_wait": args.max_wait,
        "lag_p50_ms": pct(&lags, 0.5).round(), "lag_p99_ms": pct(&lags, 0.99).round(),
        "lag_max_ms": lags.last().copied().unwrap_or(f64::NAN).round(),
    }));
    env.ch
        .query(&format!("DROP DATABASE IF EXISTS {}", env.db))
        .execute()
        .await?;
    Ok(())
}

/// Cost of a tiktoken estimate (prompt of ~500 bytes, and a 2,000-token answer),
/// encoders already loaded, as the worker does it.
fn token_cost() {
    sy_worker::tokens::warm_up();
    let prompt: sy_protocol::chat::ChatRequest = serde_json::from_value(json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant that answers briefly and precisely."},
            {"role": "user", "content": "Explain how a JetStream work-queue stream differs from a limits stream, when to use each, and what happens to a message that is acked, naked, or never acked before its ack wait expires. Give one example per case, in a short paragraph each."}
        ]
    }))
    .unwrap_or_else(|_| unreachable!("literal request"));
    let answer = "river stone light ".repeat(666);
    let n = 2000;
    let t = Instant::now();
    let mut sink = 0;
    for _ in 0..n {
        sink += sy_worker::tokens::estimate_prompt("gpt-4o-mini", &prompt);
    }
    let prompt_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = Instant::now();
    for _ in 0..200 {
        sink += sy_worker::tokens::estimate_output("gpt-4o-mini", &answer);
    }
    let answer_us = t.elapsed().as_secs_f64() * 1e6 / 200.0;
    report(json!({
        "mode": "token_estimate", "prompt_bytes": 440, "prompt_us": (prompt_us * 10.0).round() / 10.0,
        "answer_tokens": sy_worker::tokens::estimate_output("gpt-4o-mini", &answer),
        "answer_us": answer_us.round(), "checksum": sink,
    }));
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    token_cost();
    throughput(&args).await?;
    lag(&args).await?;
    Ok(())
}
