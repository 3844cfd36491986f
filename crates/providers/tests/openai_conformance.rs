//! The OpenAI-compatible adapter against the mock provider: the shared cases every
//! adapter must pass (plain, streamed, tool-call deltas, usage, 429 + Retry-After,
//! 5xx, stream cut mid-way, cancel stops the upstream call).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use futures::StreamExt;
use sy_config::{Config, MapEnv};
use sy_mock_provider::{MockOptions, MockProvider, reply_text};
use sy_protocol::chat::ChatRequest;
use sy_providers::{AnyProvider, CallContext, Chunk, Provider, ProviderError};

fn adapter(base_url: &str) -> AnyProvider {
    let config = Config::from_toml(
        &format!("[providers.p]\nkind = \"openai_compatible\"\nbase_url = \"{base_url}\"\n"),
        &MapEnv::default(),
    )
    .unwrap();
    AnyProvider::from_config(&config.providers["p"]).unwrap()
}

fn request(prompt: &str) -> ChatRequest {
    serde_json::from_value(serde_json::json!({
        "model": "route", "messages": [{"role": "user", "content": prompt}]
    }))
    .unwrap()
}

fn cx(stream: bool) -> CallContext {
    CallContext {
        model: "upstream-model".into(),
        stream,
    }
}

async fn collect(p: &AnyProvider, prompt: &str, stream: bool) -> Result<Vec<Chunk>, ProviderError> {
    let mut s = p.chat(&request(prompt), &cx(stream)).await?;
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.push(c?);
    }
    Ok(out)
}

fn text(chunks: &[Chunk]) -> String {
    chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.delta.content.clone())
        .collect()
}

#[tokio::test]
async fn plain_and_streamed_answers_carry_the_same_text_and_usage() {
    let mock = MockProvider::start(MockOptions::new("p")).await.unwrap();
    let p = adapter(&mock.base_url());
    let plain = collect(&p, "hi [[mock:tokens=5]]", false).await.unwrap();
    assert_eq!(plain.len(), 1);
    assert_eq!(text(&plain), reply_text("hi", 5, 0));
    assert_eq!(
        plain[0].meta.as_ref().unwrap().model.as_deref(),
        Some("upstream-model")
    );
    assert_eq!(plain[0].usage.as_ref().unwrap().completion_tokens, 5);
    let streamed = collect(&p, "hi [[mock:tokens=5]]", true).await.unwrap();
    assert!(streamed.len() > 5);
    assert_eq!(text(&streamed), reply_text("hi", 5, 0));
    assert!(streamed[0].meta.is_some() && streamed[1].meta.is_none());
    let usage = streamed
        .iter()
        .find_map(|c| c.usage.clone())
        .expect("usage is always asked for in streams");
    assert_eq!(usage.completion_tokens, 5);
}

#[tokio::test]
async fn tool_call_deltas_arrive_in_pieces() {
    let mock = MockProvider::start(MockOptions::new("p")).await.unwrap();
    let p = adapter(&mock.base_url());
    let chunks = collect(&p, "x [[mock:tool_call=f]]", true).await.unwrap();
    let args: String = chunks
        .iter()
        .flat_map(|c| &c.choices)
        .flat_map(|c| c.delta.tool_calls.clone().unwrap_or_default())
        .filter_map(|t| t.function.and_then(|f| f.arguments))
        .collect();
    assert!(
        serde_json::from_str::<serde_json::Value>(&args)
            .unwrap()
            .is_object()
    );
}

#[tokio::test]
async fn rate_limit_and_server_errors_are_classified() {
    let mock = MockProvider::start(MockOptions::new("p")).await.unwrap();
    let p = adapter(&mock.base_url());
    match collect(&p, "x [[mock:status=429,retry_after=2]]", true).await {
        Err(ProviderError::RateLimited { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(2)))
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    match collect(&p, "x [[mock:status=500]]", false).await {
        Err(ProviderError::Upstream { status: 500, .. }) => {}
        other => panic!("expected Upstream 500, got {other:?}"),
    }
}

#[tokio::test]
async fn a_cut_stream_is_an_error_after_the_chunks_before_it() {
    let mock = MockProvider::start(MockOptions::new("p")).await.unwrap();
    let p = adapter(&mock.base_url());
    let mut s = p
        .chat(&request("x [[mock:tokens=10,cut_after=4]]"), &cx(true))
        .await
        .unwrap();
    let mut ok = 0;
    let mut err = None;
    while let Some(c) = s.next().await {
        match c {
            Ok(_) => ok += 1,
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    assert!(ok >= 4, "chunks before the cut arrive: {ok}");
    assert!(matches!(err, Some(ProviderError::StreamCut)), "{err:?}");
}

#[tokio::test]
async fn refused_connection_is_a_connect_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = adapter(&format!("http://127.0.0.1:{port}/v1"));
    assert!(matches!(
        collect(&p, "x", false).await,
        Err(ProviderError::Connect(_))
    ));
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_upstream_call() {
    let mock = MockProvider::start(MockOptions::new("p")).await.unwrap();
    let p = adapter(&mock.base_url());
    let mut s = p
        .chat(&request("x [[mock:tokens=100,delay_ms=20]]"), &cx(true))
        .await
        .unwrap();
    s.next().await.unwrap().unwrap();
    drop(s);
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while mock.stats().cancelled == 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.stats().cancelled, 1);
}
