//! Processes die under load: a worker killed with SIGKILL mid-stream, a worker
//! stopped with SIGTERM (drain), NATS restarted under traffic. Every request
//! either completes or fails cleanly, none hangs, and usage is recorded for
//! every request. Each test prints its figures.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sy_test_support::sse_data;

use crate::stack::{Stack, StackOptions, body, streamed_content};

/// What one streamed request ended as.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum End {
    /// The whole answer and `[DONE]`.
    Complete,
    /// An error status or an error event; no success ending after partial text.
    CleanError,
    /// Anything else: a stream that ended like a success with the wrong text,
    /// or no answer within the client's patience.
    Lost,
}

async fn streamed(stack: &Stack, prompt: String, tokens: usize) -> End {
    let mut b = body("gpt-4o-mini", &prompt);
    b["stream"] = json!(true);
    let Ok(resp) = stack.chat(&b).timeout(Duration::from_secs(40)).send().await else {
        return End::Lost;
    };
    if resp.status() != 200 {
        return if resp.status().is_server_error() {
            End::CleanError
        } else {
            End::Lost
        };
    }
    let data = sse_data(resp).await;
    let clean = |d: &[String]| d.last().is_some_and(|l| l.contains("\"error\""));
    if data.last().map(String::as_str) == Some("[DONE]") {
        let text = prompt.split(" [[").next().unwrap_or("").trim().to_owned();
        if streamed_content(&data, 0) == sy_mock_provider::reply_text(&text, tokens, 0) {
            End::Complete
        } else {
            End::Lost
        }
    } else if clean(&data) {
        End::CleanError
    } else {
        End::Lost
    }
}

fn tally(ends: &[End]) -> (usize, usize, usize) {
    let n = |e| ends.iter().filter(|x| **x == e).count();
    (n(End::Complete), n(End::CleanError), n(End::Lost))
}

/// Distinct request ids with at least one usage row, and all rows.
async fn usage_figures(stack: &Stack) -> (u64, u64) {
    let c = stack.clickhouse.as_ref().unwrap();
    let client = sy_accounting::client(c);
    client
        .query(&format!(
            "SELECT uniqExact(request_id), count() FROM {}.requests FINAL",
            c.database
        ))
        .fetch_one::<(u64, u64)>()
        .await
        .unwrap()
}

async fn wait_usage(stack: &Stack, requests: u64) -> (u64, u64) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let f = usage_figures(stack).await;
        if f.0 >= requests || Instant::now() > until {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_loses_no_request() {
    let stack = Stack::start_with(StackOptions {
        split_workers: 2,
        ack_wait: "2s",
        clickhouse: true,
        ..Default::default()
    })
    .await;
    let n = 20;
    let tokens = 30;
    let mut calls = Vec::new();
    for i in 0..n {
        let prompt = format!("story {i} [[mock:tokens={tokens},delay_ms=50]]");
        let s = &stack;
        calls.push(async move { streamed(s, prompt, tokens).await });
    }
    // And requests still waiting for their first token: nothing reached
    // their clients, so a redelivery serves them transparently.
    let waiting = 6;
    let mut quiet = Vec::new();
    for i in 0..waiting {
        let s = &stack;
        quiet.push(async move {
            let b = body("gpt-4o-mini", &format!("quiet {i} [[mock:ttft_ms=1500]]"));
            let resp = s.chat(&b).timeout(Duration::from_secs(40)).send().await;
            resp.map(|r| r.status().as_u16()).unwrap_or(0)
        });
    }
    let run = futures::future::join(
        futures::future::join_all(calls),
        futures::future::join_all(quiet),
    );
    tokio::pin!(run);
    // Half a second in, both workers are busy: kill one outright.
    let (ends, quiet) = tokio::select! {
        ends = &mut run => ends,
        () = tokio::time::sleep(Duration::from_millis(500)) => {
            stack_kill(&stack);
            run.await
        }
    };
    let (complete, clean, lost) = tally(&ends);
    let served_quietly = quiet.iter().filter(|s| **s == 200).count();
    let total = (n + waiting) as u64;
    let (with_rows, rows) = wait_usage(&stack, total).await;
    println!(
        "worker SIGKILL: streams sent {n}, completed {complete}, failed cleanly {clean}, lost {lost}; \
         waiting for a first token {waiting}, served {served_quietly}; \
         requests with usage rows {with_rows} of {total}, rows {rows}"
    );
    assert_eq!(lost, 0, "{ends:?}");
    assert_eq!(complete + clean, n);
    assert!(complete > 0, "the surviving worker served");
    assert_eq!(
        served_quietly, waiting,
        "redelivered transparently: {quiet:?}"
    );
    assert_eq!(with_rows, total, "every request has its usage rows");
    // The survivor keeps serving.
    let end = streamed(&stack, "after [[mock:tokens=5]]".into(), 5).await;
    assert_eq!(end, End::Complete);
}

fn stack_kill(stack: &Stack) {
    stack.signal_worker(0, "-KILL");
    let status = stack.wait_worker(0);
    assert!(!status.success(), "killed: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_with_sigterm_finishes_what_it_holds() {
    let stack = Stack::start_with(StackOptions {
        split_workers: 1,
        ..Default::default()
    })
    .await;
    let n = 8;
    let tokens = 20;
    let mut calls = Vec::new();
    for i in 0..n {
        let prompt = format!("drain {i} [[mock:tokens={tokens},delay_ms=50]]");
        let s = &stack;
        calls.push(async move { streamed(s, prompt, tokens).await });
    }
    let run = futures::future::join_all(calls);
    tokio::pin!(run);
    let ends = tokio::select! {
        ends = &mut run => ends,
        () = tokio::time::sleep(Duration::from_millis(300)) => {
            stack.signal_worker(0, "-TERM");
            // A replacement takes new work; the stopping worker drains.
            stack.start_worker();
            run.await
        }
    };
    let (complete, clean, lost) = tally(&ends);
    println!(
        "worker SIGTERM under load: sent {n}, completed {complete}, failed cleanly {clean}, lost {lost}"
    );
    assert_eq!((complete, clean, lost), (n, 0, 0), "{ends:?}");
    let status = stack.wait_worker(0);
    assert!(status.success(), "a clean exit after draining: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_under_load_service_resumes_without_a_restart() {
    let mut nats = sy_test_support::NatsServer::start().await;
    let stack = Stack::start_with(StackOptions {
        nats_url: nats.url(),
        ..Default::default()
    })
    .await;
    let (mut ok, mut clean, mut lost) = (0, 0, 0);
    let started = Instant::now();
    let mut restarted = false;
    let mut ok_after_restart = 0;
    while started.elapsed() < Duration::from_secs(8) || ok_after_restart < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "service did not resume"
        );
        if !restarted && started.elapsed() > Duration::from_secs(1) {
            nats.stop();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            nats.restart().await;
            restarted = true;
        }
        let resp = stack
            .chat(&body("gpt-4o-mini", "ping"))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match resp {
            Ok(r) if r.status() == 200 => {
                let v: Value = r.json().await.unwrap();
                assert!(!v["choices"][0]["message"]["content"].is_null());
                ok += 1;
                if restarted {
                    ok_after_restart += 1;
                }
            }
            Ok(r) if r.status().is_server_error() => {
                let v: Value = r.json().await.unwrap();
                assert!(v["error"]["code"].is_string(), "a clean error: {v}");
                clean += 1;
            }
            _ => lost += 1,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "NATS restart under traffic: sent {}, succeeded {ok}, failed cleanly {clean}, lost {lost}",
        ok + clean + lost
    );
    assert_eq!(lost, 0);
    assert!(ok_after_restart >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_stopped_with_sigterm_finishes_its_streams_and_takes_no_new_work() {
    let mut stack = Stack::start_with(StackOptions {
        split_workers: 1,
        ..Default::default()
    })
    .await;
    let end = {
        let prompt = "long story [[mock:tokens=20,delay_ms=100]]".to_owned();
        let s = &stack;
        let running = async move { streamed(s, prompt, 20).await };
        tokio::pin!(running);
        tokio::select! {
            end = &mut running => end,
            () = tokio::time::sleep(Duration::from_millis(400)) => {
                stack.signal_ingress("-TERM");
                running.await
            }
        }
    };
    assert_eq!(end, End::Complete, "the stream in flight finished");
    let status = stack.wait_ingress();
    assert!(status.success(), "a clean exit: {status:?}");
    let refused = stack.chat(&body("gpt-4o-mini", "late")).send().await;
    assert!(refused.is_err(), "no new work after shutdown");
}
