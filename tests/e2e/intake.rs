//! Slow and greedy clients (issue 24, defect 7): headers that never finish,
//! bodies that trickle or stop short of their length, more connections than
//! the cap, and more body bytes at once than the budget. Each gets a bounded
//! wait and a clean answer (or a closed connection where no request exists),
//! no provider call, and the service answers afterwards.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stack::{KEY, Stack, StackOptions, body};

fn addr(stack: &Stack) -> String {
    stack.base.trim_start_matches("http://").to_owned()
}

/// Reads one HTTP/1.1 response: its status, its headers (lower-cased names)
/// and its body as JSON.
async fn read_response(tcp: &mut TcpStream) -> (u16, Vec<(String, String)>, Value) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .expect("a content-length");
    while buf.len() < head_end + len {
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap();
    (status, headers, body)
}

/// Waits for the server to close `tcp`; how long that took.
async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection was still open after {limit:?}"),
        }
    }
}

/// The stack's one usage row (waiting up to 15 s for it): its status and
/// the UInt64 column `column`.
async fn the_usage_row(stack: &Stack, column: &str) -> (String, u64) {
    let ch = stack.clickhouse.as_ref().unwrap();
    let client = sy_accounting::client(ch);
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let rows: Vec<(String, u64)> = client
            .query(&format!(
                "SELECT status, {column} FROM {}.requests FINAL",
                ch.database
            ))
            .fetch_all()
            .await
            .unwrap();
        if let Some(r) = rows.into_iter().next() {
            return r;
        }
        assert!(Instant::now() < until, "no usage row");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn still_answers(stack: &Stack) {
    // A connection of its own: the stack's client may hold an idle one that
    // the server is closing right now (idle keep-alives are closed after the
    // header timeout, which these tests make short), and a POST sent on it
    // fails on the client's side however healthy the server is.
    let resp = sy_test_support::http()
        .post(stack.url("/v1/chat/completions"))
        .bearer_auth(crate::stack::KEY)
        .json(&body("gpt-4o-mini", "still there?"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Headers sent in part, or not at all: the connection is closed once
/// `header_timeout` has passed (there is no request to answer), and a
/// keep-alive connection left idle is closed the same way.
#[tokio::test]
async fn headers_that_never_finish_get_their_connection_closed() {
    let stack = Stack::start_with(StackOptions {
        server_extra: "header_timeout = \"1s\"",
        ..StackOptions::default()
    })
    .await;
    let a = addr(&stack);
    let mut partial = TcpStream::connect(&a).await.unwrap();
    partial
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bea")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(&a).await.unwrap();
    // A request answered, then nothing more on the connection.
    let mut idle = TcpStream::connect(&a).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    for (name, tcp) in [
        ("partial headers", &mut partial),
        ("no bytes", &mut silent),
        ("idle keep-alive", &mut idle),
    ] {
        let took = closed_within(tcp, Duration::from_secs(5)).await;
        assert!(took < Duration::from_secs(3), "{name}: {took:?}");
    }
    assert_eq!(stack.upstream_requests(), 0);
    still_answers(&stack).await;
}

/// A body that stops short of its Content-Length, or trickles below the
/// minimum rate, is answered 408 in the surface's own format once the grace
/// and the rate allow no more; a body that keeps the rate is served.
#[tokio::test]
async fn bodies_slower_than_the_minimum_rate_get_408_in_the_clients_format() {
    let stack = Stack::start_with(StackOptions {
        server_extra: "body_timeout = \"1s\"\nmin_body_rate = 1000",
        ..StackOptions::default()
    })
    .await;
    let a = addr(&stack);
    for (path, ct) in [
        ("/v1/chat/completions", "application/json"),
        ("/v1/messages", "application/json"),
        ("/v1/embeddings", "application/json"),
        ("/v1/files", "multipart/form-data; boundary=XyZ"),
    ] {
        let mut tcp = TcpStream::connect(&a).await.unwrap();
        let start = if path == "/v1/files" {
            "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n{\"custom_id\":"
        } else {
            "{\"model\": \"gpt-4o-mini\", \"messages\": [{\"role\": \"user\", \"content\": \""
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nx-api-key: {KEY}\r\n\
             anthropic-version: 2023-06-01\r\nContent-Type: {ct}\r\nContent-Length: 5000\r\n\r\n{start}"
        );
        let sent = Instant::now();
        tcp.write_all(head.as_bytes()).await.unwrap();
        let (status, _, v) = tokio::time::timeout(Duration::from_secs(10), read_response(&mut tcp))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer to a body that stopped short"));
        let took = sent.elapsed();
        assert_eq!(status, 408, "{path}: {v}");
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(4),
            "{path}: {took:?}"
        );
        if path == "/v1/messages" {
            assert_eq!(v["type"], "error", "{v}");
            assert_eq!(v["error"]["type"], "timeout_error", "{v}");
        } else {
            assert_eq!(v["error"]["code"], "request_timeout", "{path}: {v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("1000 bytes per second"),
                "{path}: {v}"
            );
        }
    }
    // Bytes sent fast do not buy a long pause: 4,000 of 5,000 bytes at once,
    // then nothing, is cut one grace after the last bytes (the rate alone
    // would allow 5 s).
    let mut tcp = TcpStream::connect(&a).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{{\"model\": \"gpt-4o-mini\", \"x\": \"{}",
        "y".repeat(4000)
    );
    let sent = Instant::now();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let (status, _, v) = read_response(&mut tcp).await;
    assert_eq!(status, 408, "{v}");
    assert!(
        sent.elapsed() < Duration::from_millis(2500),
        "{:?}",
        sent.elapsed()
    );
    // A body sent in pieces at twice the minimum rate, for longer than the grace.
    let text = "word ".repeat(600);
    let full = serde_json::to_vec(&body("gpt-4o-mini", &text)).unwrap();
    let mut tcp = TcpStream::connect(&a).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        full.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    for piece in full.chunks(500) {
        tcp.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, _, v) = read_response(&mut tcp).await;
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "the grace was passed"
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        stack.upstream_requests(),
        1,
        "only the complete body reached a provider"
    );
    still_answers(&stack).await;
}

/// Connections over `max_connections` are answered 503 in JSON and closed;
/// once connections close, new ones are served.
#[tokio::test]
async fn connections_over_the_cap_get_503_and_the_service_recovers() {
    let stack = Stack::start_with(StackOptions {
        server_extra: "max_connections = 3",
        ..StackOptions::default()
    })
    .await;
    let a = addr(&stack);
    // Keep-alive connections, each with a request answered, until one is
    // refused (the test's own HTTP client may hold one of the three).
    let mut open = Vec::new();
    let refused = loop {
        assert!(open.len() <= 3, "more than 3 connections served at once");
        let mut tcp = TcpStream::connect(&a).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if buf[..n].starts_with(b"HTTP/1.1 200") {
            open.push(tcp);
            continue;
        }
        let mut tcp_for_read = tcp;
        // Re-read as a whole response (the head may already be in `buf`).
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        let rest = {
            let mut more = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), tcp_for_read.read_to_end(&mut more))
                    .await;
            String::from_utf8_lossy(&more).to_string()
        };
        break format!("{text}{rest}");
    };
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    let lower = refused.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/json"),
        "{refused}"
    );
    assert!(lower.contains("retry-after: 1"), "{refused}");
    let json_at = refused.find("\r\n\r\n").unwrap() + 4;
    let v: Value = serde_json::from_str(&refused[json_at..]).unwrap();
    assert_eq!(v["error"]["code"], "overloaded", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("3 connections"),
        "{v}"
    );
    // Closing them frees their places.
    drop(open);
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match stack.chat(&body("gpt-4o-mini", "after")).send().await {
            Ok(r) if r.status() == 200 => break,
            other => {
                assert!(Instant::now() < until, "not served again: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Body bytes being received are capped for all requests together: with an
/// upload holding most of the budget, a chat body that does not fit gets 503
/// (`overloaded`, Retry-After), and fits again once the upload is gone.
#[tokio::test]
async fn body_bytes_in_flight_are_capped_and_released() {
    // The budget must hold one file of [batch] max_file_bytes (2,000,000 in
    // the test stack).
    let stack = Stack::start_with(StackOptions {
        server_extra: "max_body_bytes_in_flight = 2000000",
        ..StackOptions::default()
    })
    .await;
    let a = addr(&stack);
    let mut upload = TcpStream::connect(&a).await.unwrap();
    let part =
        "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n";
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 1999000\r\n\r\n{part}"
    );
    upload.write_all(head.as_bytes()).await.unwrap();
    upload.write_all(&vec![b'x'; 1_960_000]).await.unwrap();
    let big = body("gpt-4o-mini", &"word ".repeat(12_000));
    assert!(serde_json::to_vec(&big).unwrap().len() > 50_000);
    // Once the upload's bytes are in, the chat body does not fit.
    let mut served = 0;
    let until = Instant::now() + Duration::from_secs(5);
    let resp = loop {
        let resp = stack.chat(&big).send().await.unwrap();
        if resp.status() == 503 || Instant::now() > until {
            break resp;
        }
        assert_eq!(resp.status(), 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "overloaded", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("request bodies"),
        "{v}"
    );
    // A small body still fits.
    still_answers(&stack).await;
    served += 1;
    // The upload gone, its bytes are released.
    drop(upload);
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = stack.chat(&big).send().await.unwrap();
        if resp.status() == 200 {
            served += 1;
            break;
        }
        assert!(Instant::now() < until, "{}", resp.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        stack.upstream_requests(),
        served,
        "a refused body reached a provider"
    );
}

/// A streaming client that stops reading (issue 24, defect 8): once the
/// ingress's reply buffer is full, the request is cancelled at once, so the
/// provider stops generating for nobody; the client's stream ends with an error
/// (not `[DONE]`) and the usage row says `cut_off`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_its_upstream_call_dropped() {
    let stack = Stack::start_with(StackOptions {
        clickhouse: true,
        ..StackOptions::default()
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(addr(&stack).parse().unwrap()).await.unwrap();
    let mut b = body("gpt-4o-mini", "a very long answer [[mock:tokens=200000]]");
    b["stream"] = serde_json::json!(true);
    let payload = serde_json::to_vec(&b).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&payload).await.unwrap();
    // Read nothing: the upstream call must end long before 200,000 tokens.
    let mock = &stack.mock;
    let until = Instant::now() + Duration::from_secs(20);
    while mock.stats().cancelled == 0 {
        assert!(
            Instant::now() < until,
            "the upstream call ran on for a client that reads nothing: {:?}",
            mock.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mock.stats().completed, 0, "{:?}", mock.stats());
    // Now read it all: what was buffered, then an error, never [DONE].
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&chunk[..n]);
                if got.ends_with(b"0\r\n\r\n") {
                    break;
                }
            }
            Ok(Err(e)) => panic!("{e}"),
        }
    }
    let tail = String::from_utf8_lossy(&got[got.len().saturating_sub(2000)..]).to_string();
    assert!(got.starts_with(b"HTTP/1.1 200"), "{tail}");
    assert!(!tail.contains("[DONE]"), "{tail}");
    assert!(tail.contains("read too slowly"), "{tail}");
    // The usage row says what the client got.
    let (status, output) = the_usage_row(&stack, "output_tokens").await;
    assert_eq!(status, "cut_off");
    assert!(
        output > 0 && output < 200_000,
        "the tokens produced until the cut are billed: {output}"
    );
}

/// A stream long enough to have been cut off waits a moment for the cut-off
/// cancel before its usage row is written; the row's end time is still the
/// call's, not the end of that wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_streams_row_keeps_the_calls_end_time() {
    let stack = Stack::start_with(StackOptions {
        clickhouse: true,
        ..StackOptions::default()
    })
    .await;
    // Paced (1 ms a chunk): unpaced, a loaded box's debug-build ingress can
    // fall 1,024 frames behind the worker and cut even a fast reader off.
    let mut b = body(
        "gpt-4o-mini",
        "a long answer [[mock:tokens=1100,delay_ms=1]]",
    );
    b["stream"] = serde_json::json!(true);
    let resp = stack.chat(&b).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let data = sy_test_support::sse_data(resp).await;
    let done_at = sy_protocol::now_unix_ms();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(
        data.len() > sy_protocol::REPLY_BUFFER_FRAMES,
        "{}",
        data.len()
    );
    let (status, finished) = the_usage_row(&stack, "finished_ms").await;
    assert_eq!(status, "ok");
    assert!(
        finished <= done_at + 100,
        "the row ends {} ms after the client had [DONE]",
        finished.saturating_sub(done_at)
    );
}
