//! `sy-bench --hop`: the bare JetStream hop Switchyard's design mandates,
//! measured alone, as the reference its added latency is compared with
//! (issue 23). One request is: publish a payload the size of a request
//! envelope to a work-queue stream (file storage, `Nats-Msg-Id`) and wait
//! for JetStream's ack; a pull consumer takes it and answers on a core-NATS
//! reply subject (then acks); the client's one reply subscription hands the
//! answer back. Timed from before the publish to the answer, closed loop,
//! like the HTTP modes; the stream is deleted at the end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::oneshot;

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>;

/// Runs `requests` measured hops (after `warmup`) with `concurrency`
/// clients against the NATS server at `url`; the result line.
pub async fn run(
    url: &str,
    concurrency: usize,
    requests: usize,
    warmup: usize,
    payload_bytes: usize,
    label: &str,
) -> anyhow::Result<Value> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await?;
    let js = jetstream::new(client.clone());
    let run = uuid::Uuid::now_v7().simple().to_string();
    let name = format!("SYBENCH_HOP_{run}");
    let subject = format!("sybench.hop.{run}.req");
    let reply_prefix = format!("sybench.hop.{run}.reply");
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
    let result = measure(
        &client,
        &js,
        &stream,
        &subject,
        &reply_prefix,
        concurrency,
        requests,
        warmup,
        payload_bytes,
    )
    .await;
    // Whatever happened, the scratch stream goes.
    let _ = js.delete_stream(&name).await;
    let (mut samples, errors, elapsed) = result?;
    samples.sort_by(f64::total_cmp);
    Ok(json!({
        "label": label,
        "mode": "hop",
        "concurrency": concurrency,
        "requests": samples.len(),
        "errors": errors,
        "payload_bytes": payload_bytes,
        "p50_ms": crate::round(crate::pct(&samples, 0.50)),
        "p90_ms": crate::round(crate::pct(&samples, 0.90)),
        "p99_ms": crate::round(crate::pct(&samples, 0.99)),
        "mean_ms": crate::round(samples.iter().sum::<f64>() / samples.len().max(1) as f64),
        "rps": (samples.len() as f64 / elapsed).round(),
    }))
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    client: &async_nats::Client,
    js: &jetstream::Context,
    stream: &stream::Stream,
    subject: &str,
    reply_prefix: &str,
    concurrency: usize,
    requests: usize,
    warmup: usize,
    payload_bytes: usize,
) -> anyhow::Result<(Vec<f64>, usize, f64)> {
    // The worker's side: a pull consumer answering each request on its
    // reply subject, then acking it.
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("hop".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: concurrency.max(1) as i64 * 2,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(concurrency.max(1) * 2)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    let responder = client.clone();
    let worker = tokio::spawn(async move {
        // An error from the pull (a heartbeat missed while the box is busy)
        // is not the end of the stream: stopping there left every later hop
        // waiting out its 30 s time-out (a bench run hung at concurrency 64).
        while let Some(next) = messages.next().await {
            let Ok(msg) = next else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let reply = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("reply"))
                .map(|v| v.as_str().to_owned());
            if let Some(reply) = reply {
                let _ = responder.publish(reply, "ok".into()).await;
            }
            let _ = msg.ack().await;
        }
    });

    // The ingress's side: one reply subscription, answers handed to whoever waits.
    let waiting: Waiting = Arc::default();
    let mut replies = client.subscribe(format!("{reply_prefix}.*")).await?;
    let relay = {
        let waiting = waiting.clone();
        tokio::spawn(async move {
            while let Some(m) = replies.next().await {
                let id = m
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|s| s.parse::<u64>().ok());
                if let Some(tx) = id.and_then(|id| waiting.lock().ok()?.remove(&id)) {
                    let _ = tx.send(());
                }
            }
        })
    };

    let payload = bytes::Bytes::from(vec![b'x'; payload_bytes]);
    let ids = Arc::new(AtomicUsize::new(0));
    let (js, subject, reply_prefix) = (js.clone(), subject.to_owned(), reply_prefix.to_owned());
    let hop = move |id: u64| {
        let (js, waiting, payload) = (js.clone(), waiting.clone(), payload.clone());
        let (subject, reply) = (subject.clone(), format!("{reply_prefix}.{id}"));
        async move {
            let (tx, rx) = oneshot::channel();
            if let Ok(mut w) = waiting.lock() {
                w.insert(id, tx);
            }
            let start = Instant::now();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("reply", reply.as_str());
            headers.insert("Nats-Msg-Id", id.to_string().as_str());
            js.publish_with_headers(subject, headers, payload)
                .await?
                .await?;
            tokio::time::timeout(Duration::from_secs(30), rx).await??;
            anyhow::Ok(start.elapsed().as_secs_f64() * 1000.0)
        }
    };

    // Warm-up, unmeasured; then the measured run.
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (ids, hop) = (ids.clone(), hop.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let id = ids.fetch_add(1, Ordering::Relaxed);
                if id >= warmup {
                    break;
                }
                let _ = hop(id as u64).await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (ids, done, hop) = (ids.clone(), done.clone(), hop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut samples, mut errors) = (Vec::new(), 0usize);
            while done.fetch_add(1, Ordering::Relaxed) < requests {
                let id = ids.fetch_add(1, Ordering::Relaxed) as u64;
                match hop(id).await {
                    Ok(ms) => samples.push(ms),
                    Err(_) => errors += 1,
                }
            }
            (samples, errors)
        }));
    }
    let (mut samples, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (s, e) = t.await?;
        samples.extend(s);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    worker.abort();
    relay.abort();
    Ok((samples, errors, elapsed))
}
