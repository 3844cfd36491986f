//! `sy-bench`: a closed-loop load generator for chat completions.
//!
//! C workers send N requests in all over keep-alive connections (TCP_NODELAY) and
//! record each request's latency: send → whole body read (non-streamed), or
//! send → first content token and send → `[DONE]` (streamed). Prints one JSON
//! line with percentiles and throughput. bench/run.sh runs it against the mock
//! directly and through Switchyard, in one run, to measure the added latency.
//! With `--hop --nats URL` it measures the bare JetStream hop instead
//! ([`hop`]), the reference the added latency is compared with. With
//! `--stages` every request asks Switchyard where its time went
//! (`x-switchyard-timing: stages`) and the line carries each stage's median
//! and mean from the `Server-Timing` answers ([`stages`]).

mod hop;
mod stages;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use serde_json::json;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "sy-bench",
    about = "Closed-loop load generator for chat completions"
)]
struct Args {
    /// Full URL of the chat completions endpoint.
    #[arg(long, required_unless_present = "hop")]
    url: Option<String>,
    /// Measure the bare JetStream hop (publish with ack to a work-queue
    /// stream, a pull consumer answers on a core-NATS reply subject)
    /// against `--nats` instead of an HTTP endpoint.
    #[arg(long)]
    hop: bool,
    /// The NATS server of `--hop`.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// The payload of each hop, bytes (about a short chat's envelope).
    #[arg(long, default_value_t = 1024)]
    hop_bytes: usize,
    /// Bearer key.
    #[arg(long, default_value = "sk-sy-local-dev")]
    key: String,
    /// Model to ask for.
    #[arg(long, default_value = "gpt-4o-mini")]
    model: String,
    /// Concurrent workers.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Measured requests in all.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Unmeasured requests first.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Stream the answers.
    #[arg(long)]
    stream: bool,
    /// The user message.
    #[arg(long, default_value = "Say something short. [[mock:tokens=16]]")]
    prompt: String,
    /// A label for the result line.
    #[arg(long, default_value = "run")]
    label: String,
    /// The client API of `url`: `chat` (OpenAI Chat Completions) or `messages`
    /// (Anthropic Messages).
    #[arg(long, default_value = "chat")]
    api: String,
    /// A request header `NAME: VALUE` (repeatable), e.g. `x-switchyard-cache: use`.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Ask for each request's stages and report them (`Server-Timing`).
    #[arg(long)]
    stages: bool,
    /// Each worker waits this long after an answer before its next request
    /// (what a request leaves behind, e.g. its usage stored, is then done
    /// before the next one comes). Throughput is then not the server's.
    #[arg(long, default_value_t = 0)]
    gap_ms: u64,
}

#[derive(Default)]
struct Sample {
    total_ms: f64,
    ttft_ms: Option<f64>,
    /// The answer's `Server-Timing` (with `--stages`).
    timing: Option<String>,
}

async fn one(client: &reqwest::Client, args: &Args, body: &[u8]) -> anyhow::Result<Sample> {
    let start = Instant::now();
    let mut req = client
        .post(args.url.as_deref().unwrap_or_default())
        .bearer_auth(&args.key)
        .header("x-api-key", &args.key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json");
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--header takes 'NAME: VALUE', not '{h}'"))?;
        req = req.header(name.trim(), value.trim());
    }
    if args.stages {
        req = req.header("x-switchyard-timing", "stages");
    }
    let resp = req.body(body.to_vec()).send().await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        anyhow::bail!(
            "status {status}: {}",
            text.chars().take(300).collect::<String>()
        );
    }
    let timing = resp
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if !args.stream {
        let bytes = resp.bytes().await?;
        anyhow::ensure!(!bytes.is_empty(), "empty body");
        return Ok(Sample {
            total_ms: start.elapsed().as_secs_f64() * 1e3,
            ttft_ms: None,
            timing,
        });
    }
    let mut ttft = None;
    let mut seen = Vec::new();
    // The first token: a content (OpenAI) or text delta (Anthropic) that is not
    // empty. A text delta's keys come in Anthropic's order (`"type":"text_delta",
    // "text":`); builds before 2026-12-05 wrote them sorted (`"delta":{"text":`).
    let needles: &[&[u8]] = if args.api == "messages" {
        &[b"\"text_delta\",\"text\":\"", b"\"delta\":{\"text\":\""]
    } else {
        &[b"\"content\":\""]
    };
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if ttft.is_none() {
            seen.extend_from_slice(&chunk);
            // Every needle in what came so far (a replayed stream comes in
            // one piece: its empty role delta and its first text together).
            while let Some((pos, needle)) = needles
                .iter()
                .find_map(|n| find(&seen, n).map(|pos| (pos, *n)))
            {
                match seen.get(pos + needle.len()) {
                    Some(&b) if b != b'"' => {
                        ttft = Some(start.elapsed().as_secs_f64() * 1e3);
                        seen.clear();
                        break;
                    }
                    // The value's first byte has not come yet.
                    None => break,
                    Some(_) => {
                        seen.drain(..pos + needle.len());
                    }
                }
            }
        }
    }
    Ok(Sample {
        total_ms: start.elapsed().as_secs_f64() * 1e3,
        ttft_ms: ttft,
        timing,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Arc::new(Args::parse());
    if args.hop {
        let line = hop::run(
            &args.nats,
            args.concurrency,
            args.requests,
            args.warmup,
            args.hop_bytes,
            &args.label,
        )
        .await?;
        writeln!(std::io::stdout().lock(), "{line}")?;
        return Ok(());
    }
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.concurrency.max(1) * 2)
        .timeout(Duration::from_secs(60))
        .build()?;
    let body = Arc::new(serde_json::to_vec(&json!({
        "model": args.model,
        "max_tokens": 256,
        "stream": args.stream,
        "messages": [{"role": "user", "content": args.prompt}],
    }))?);

    // Warm-up: open the connections and the caches, unmeasured.
    let warm = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, args, body, warm) = (client.clone(), args.clone(), body.clone(), warm.clone());
        tasks.push(tokio::spawn(async move {
            while warm.fetch_add(1, Ordering::Relaxed) < args.warmup {
                let _ = one(&client, &args, &body).await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, args, body, next) = (client.clone(), args.clone(), body.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0usize;
            let mut first_error = None;
            while next.fetch_add(1, Ordering::Relaxed) < args.requests {
                match one(&client, &args, &body).await {
                    Ok(s) => samples.push(s),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
                if args.gap_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
                }
            }
            (samples, errors, first_error)
        }));
    }
    let mut samples = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let (s, e, f) = t.await?;
        samples.extend(s);
        errors += e;
        first_error = first_error.or(f);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut total: Vec<f64> = samples.iter().map(|s| s.total_ms).collect();
    total.sort_by(f64::total_cmp);
    let mut ttft: Vec<f64> = samples.iter().filter_map(|s| s.ttft_ms).collect();
    ttft.sort_by(f64::total_cmp);
    let mut line = json!({
        "label": args.label,
        "api": args.api,
        "stream": args.stream,
        "concurrency": args.concurrency,
        "requests": samples.len(),
        "errors": errors,
        "p50_ms": round(pct(&total, 0.50)),
        "p90_ms": round(pct(&total, 0.90)),
        "p99_ms": round(pct(&total, 0.99)),
        "mean_ms": round(total.iter().sum::<f64>() / total.len().max(1) as f64),
        "rps": (samples.len() as f64 / elapsed).round(),
    });
    if args.stream {
        line["ttft_p50_ms"] = json!(round(pct(&ttft, 0.50)));
        line["ttft_p99_ms"] = json!(round(pct(&ttft, 0.99)));
    }
    if let Some(e) = first_error {
        line["first_error"] = json!(e);
    }
    if args.stages {
        let timed: Vec<(f64, &str)> = samples
            .iter()
            .map(|s| (s.total_ms, s.timing.as_deref().unwrap_or_default()))
            .collect();
        line["stages"] = stages::summary(&timed)?;
    }
    writeln!(std::io::stdout().lock(), "{line}")?;
    Ok(())
}
