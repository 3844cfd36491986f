//! `POST /v1/audio/transcriptions` and `/v1/audio/translations` through the
//! stack: multipart uploads into the blob store, each response format,
//! fallback across Whisper targets, usage rows billed per second, and bad
//! uploads refused before any provider.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use serde_json::Value;
use sy_mock_provider::audio::{transcript, wav};

use crate::stack::{Stack, StackOptions};

fn form(model: &str, audio: Vec<u8>, filename: &str) -> Form {
    Form::new().text("model", model.to_owned()).part(
        "file",
        Part::bytes(audio)
            .file_name(filename.to_owned())
            .mime_str("audio/wav")
            .unwrap(),
    )
}

async fn send(stack: &Stack, path: &str, form: Form) -> reqwest::Response {
    stack
        .http
        .post(stack.url(path))
        .bearer_auth(crate::stack::KEY)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_transcribed_in_every_format_fall_back_and_are_billed_per_second() {
    let stack = Stack::start_with(StackOptions {
        clickhouse: true,
        ..Default::default()
    })
    .await;
    let audio = wav(2.5);
    let text = transcript(&audio);

    // json, the default.
    let resp = send(
        &stack,
        "/v1/audio/transcriptions",
        form("whisper-1", audio.clone(), "hello.wav"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-provider"], "openai");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["text"], text.as_str(), "{v}");

    // text (asked of the provider as json, whose usage says the seconds),
    // srt, vtt and verbose_json, each with its media type.
    for (format, kind, needle) in [
        ("text", "text/plain; charset=utf-8", format!("{text}\n")),
        ("srt", "text/plain; charset=utf-8", "00:00:02,500".into()),
        ("vtt", "text/vtt; charset=utf-8", "WEBVTT".into()),
        (
            "verbose_json",
            "application/json",
            "\"duration\":2.5".into(),
        ),
    ] {
        let resp = send(
            &stack,
            "/v1/audio/transcriptions",
            form("whisper-1", audio.clone(), "hello.wav").text("response_format", format),
        )
        .await;
        assert_eq!(resp.status(), 200, "{format}");
        assert_eq!(resp.headers()["content-type"], kind, "{format}");
        let body = resp.text().await.unwrap();
        assert!(body.contains(&text), "{format}: {body}");
        assert!(body.contains(&needle), "{format}: {body}");
        if format == "text" {
            assert_eq!(body, needle);
        }
    }

    // A translation.
    let resp = send(
        &stack,
        "/v1/audio/translations",
        form("whisper-1", audio.clone(), "hallo.wav").text("response_format", "verbose_json"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["task"], "translate", "{v}");

    // OpenAI failing: the self-hosted Whisper transcribes.
    let resp = send(
        &stack,
        "/v1/audio/transcriptions",
        form("whisper-1", audio.clone(), "hello.wav")
            .text("prompt", "[[mock:status=500,only=openai]]"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-provider"], "vllm");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["text"], text.as_str(), "{v}");

    // Usage rows: 2.5 s billed as 3 s, at $0.0001 (OpenAI) or $0.00003
    // (vLLM) a second, +20 % markup; the failed attempts bill nothing.
    type Row = (String, String, String, u32, Option<i64>, Option<i64>);
    type Raw = (String, String, String, u32, String, String);
    let nanos = |s: String| sy_config::price::parse_nanos(&s);
    let raw: Vec<Raw> = stack
        .rows_until(
            "SELECT api, provider, status, audio_seconds, \
             ifNull(toString(cost), ''), ifNull(toString(billed), '') \
             FROM {db}.requests FINAL WHERE api IN ('transcriptions', 'translations') \
             ORDER BY received_ms, attempt",
            |rows: &[Raw]| rows.iter().filter(|r| r.2 == "ok").count() >= 7,
        )
        .await;
    let rows: Vec<Row> = raw
        .into_iter()
        .map(|(a, p, s, n, c, b)| (a, p, s, n, nanos(c), nanos(b)))
        .collect();
    let ok: Vec<&Row> = rows.iter().filter(|r| r.2 == "ok").collect();
    assert_eq!(ok.len(), 7, "{rows:?}");
    for r in &ok[..6] {
        assert_eq!((r.1.as_str(), r.3), ("openai", 3), "{rows:?}");
        assert_eq!((r.4, r.5), (Some(300_000), Some(360_000)), "{rows:?}");
    }
    assert_eq!(ok[5].0, "translations", "{rows:?}");
    assert_eq!((ok[6].1.as_str(), ok[6].3), ("vllm", 3), "{rows:?}");
    assert_eq!(
        (ok[6].4, ok[6].5),
        (Some(90_000), Some(108_000)),
        "{rows:?}"
    );
    for failed in rows.iter().filter(|r| r.2 != "ok") {
        assert_eq!((failed.1.as_str(), failed.3), ("openai", 0), "{rows:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_before_any_provider() {
    let stack = Stack::start_with(StackOptions {
        server_extra: "max_upload_bytes = 100000",
        ..Default::default()
    })
    .await;
    let before = stack.upstream_requests();
    let audio = wav(1.0);
    let cases: Vec<(Form, u16, &str)> = vec![
        (
            Form::new().part("file", Part::bytes(audio.clone()).file_name("a.wav")),
            400,
            "model",
        ),
        (Form::new().text("model", "whisper-1"), 400, "file"),
        (form("whisper-1", audio.clone(), "notes.txt"), 400, "file"),
        (
            form("whisper-1", audio.clone(), "a.wav").text("response_format", "docx"),
            400,
            "response_format",
        ),
        (
            form("whisper-1", audio.clone(), "a.wav").text("temperature", "hot"),
            400,
            "temperature",
        ),
        // A chat model transcribes nothing.
        (form("gpt-4o-mini", audio.clone(), "a.wav"), 400, "model"),
    ];
    for (f, status, param) in cases {
        let resp = send(&stack, "/v1/audio/transcriptions", f).await;
        assert_eq!(resp.status(), status, "{param}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["param"], param, "{v}");
    }
    // More than max_upload_bytes: 413.
    let resp = send(
        &stack,
        "/v1/audio/transcriptions",
        form("whisper-1", wav(10.0), "long.wav"),
    )
    .await;
    assert_eq!(resp.status(), 413);
    // JSON is not an upload.
    let resp = stack
        .http
        .post(stack.url("/v1/audio/transcriptions"))
        .bearer_auth(crate::stack::KEY)
        .json(&serde_json::json!({"model": "whisper-1", "file": "a.wav"}))
        .send()
        .await
        .unwrap();
    crate::stack::refused(resp, 400, "multipart/form-data").await;
    assert_eq!(
        stack.upstream_requests(),
        before,
        "a bad upload reached a provider"
    );
    // A model whose dialect has no transcription API: refused without a call.
    let resp = send(
        &stack,
        "/v1/audio/transcriptions",
        form("claude-sonnet-4-5", audio, "a.wav"),
    )
    .await;
    crate::stack::refused(resp, 400, "no transcription API").await;
    assert_eq!(stack.upstream_requests(), before);
}

async fn speak(stack: &Stack, body: Value) -> reqwest::Response {
    stack
        .http
        .post(stack.url("/v1/audio/speech"))
        .bearer_auth(crate::stack::KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_streams_as_it_comes_falls_back_ends_cut_streams_as_cut_and_is_billed_per_character()
{
    use serde_json::json;
    use sy_mock_provider::audio::speech_bytes;
    let stack = Stack::start_with(StackOptions {
        clickhouse: true,
        ..Default::default()
    })
    .await;
    let input = "The tide turns at noon.";

    // MP3 by default, byte for byte; a WAV when asked.
    let resp = speak(
        &stack,
        json!({"model": "tts-1", "input": input, "voice": "alloy"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "audio/mpeg");
    assert_eq!(resp.headers()["x-switchyard-provider"], "openai");
    let mp3 = resp.bytes().await.unwrap();
    assert_eq!(mp3.to_vec(), speech_bytes(input, "mp3"));
    let resp = speak(
        &stack,
        json!({"model": "tts-1", "input": input, "voice": "alloy", "response_format": "wav"}),
    )
    .await;
    assert_eq!(resp.headers()["content-type"], "audio/wav");
    assert_eq!(
        resp.bytes().await.unwrap().to_vec(),
        speech_bytes(input, "wav")
    );

    // Streamed: with 150 ms between the mock's chunks, the first bytes
    // arrive long before the last.
    let paced = format!("{input} [[mock:delay_ms=150]]");
    let started = Instant::now();
    let mut resp = speak(
        &stack,
        json!({"model": "tts-1", "input": paced, "voice": "alloy"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut got = resp.chunk().await.unwrap().unwrap().to_vec();
    let first_after = started.elapsed();
    while let Some(c) = resp.chunk().await.unwrap() {
        got.extend_from_slice(&c);
    }
    let all_after = started.elapsed();
    assert_eq!(got, speech_bytes(&paced, "mp3"));
    assert!(
        all_after >= first_after + Duration::from_millis(200),
        "first {first_after:?}, all {all_after:?}"
    );

    // OpenAI failing before any audio: the self-hosted voice speaks.
    let failing = format!("{input} [[mock:status=500,only=openai]]");
    let resp = speak(
        &stack,
        json!({"model": "tts-1", "input": failing, "voice": "alloy"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-provider"], "vllm");
    assert_eq!(
        resp.bytes().await.unwrap().to_vec(),
        speech_bytes(&failing, "mp3")
    );

    // Cut after two chunks: the client's transfer fails; it is never a
    // complete answer, and no other target's audio is spliced on.
    let cut = format!("{input} [[mock:cut_after=2,delay_ms=100]]");
    let resp = speak(
        &stack,
        json!({"model": "tts-1", "input": cut, "voice": "alloy"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.is_err(), "a cut stream read as complete");

    // Usage rows: 23 characters at $15 a million (+20 %), the unpriced
    // fallback with its characters and no cost.
    let rows: Vec<(String, String, u32, String)> = stack
        .rows_until(
            "SELECT provider, status, input_characters, ifNull(toString(billed), '') \
             FROM {db}.requests FINAL WHERE api = 'speech' ORDER BY received_ms, attempt",
            |rows: &[(String, String, u32, String)]| rows.len() >= 6,
        )
        .await;
    let ok: Vec<_> = rows.iter().filter(|r| r.1 == "ok").collect();
    assert_eq!(ok.len(), 4, "{rows:?}");
    assert_eq!((ok[0].0.as_str(), ok[0].2), ("openai", 23), "{rows:?}");
    assert_eq!(
        sy_config::price::parse_nanos(&ok[0].3),
        Some(414_000),
        "{rows:?}"
    );
    assert_eq!(
        (ok[3].0.as_str(), ok[3].3.as_str()),
        ("vllm", ""),
        "{rows:?}"
    );
    let cut_row = rows.last().unwrap();
    assert_eq!(
        (cut_row.1.as_str(), cut_row.0.as_str()),
        ("error", "openai"),
        "{rows:?}"
    );
    assert!(cut_row.2 > 0, "audio was sent before the cut: {rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_speech_requests_are_refused_before_any_provider() {
    use serde_json::json;
    let stack = Stack::start().await;
    let before = stack.upstream_requests();
    for (body, param) in [
        (json!({"model": "tts-1", "voice": "alloy"}), "input"),
        (json!({"model": "tts-1", "input": "hi"}), "voice"),
        (
            json!({"model": "tts-1", "input": "hi", "voice": 5}),
            "voice",
        ),
        (
            json!({"model": "tts-1", "input": "x".repeat(4097), "voice": "alloy"}),
            "input",
        ),
        (
            json!({"model": "tts-1", "input": "hi", "voice": "alloy", "speed": 9}),
            "speed",
        ),
        (
            json!({"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "midi"}),
            "response_format",
        ),
        (
            json!({"model": "tts-1", "input": "hi", "voice": "alloy", "stream_format": "sse"}),
            "stream_format",
        ),
        (
            json!({"model": "gpt-4o-mini", "input": "hi", "voice": "alloy"}),
            "model",
        ),
    ] {
        let resp = speak(&stack, body.clone()).await;
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }
    assert_eq!(
        stack.upstream_requests(),
        before,
        "a bad request reached a provider"
    );
}
