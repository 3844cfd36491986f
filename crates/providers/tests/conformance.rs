//! Every adapter against the mock provider speaking its dialect: the shared cases
//! each must pass (plain, streamed, tool-call deltas, usage, 429 + Retry-After,
//! 5xx, overload, context length, content filter, stream cut mid-way, cancel
//! stops the upstream call, cached tokens normalised).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use futures::StreamExt;
use sy_config::{Config, MapEnv};
use sy_mock_provider::{MockOptions, MockProvider, reply_text};
use sy_protocol::ErrorCode;
use sy_protocol::chat::ChatRequest;
use sy_providers::{AnyProvider, CallContext, Chunk, Provider, ProviderError};

/// Every dialect's config kind.
const KINDS: [&str; 4] = ["openai_compatible", "anthropic", "gemini", "cohere"];

fn adapter_of(kind: &str, base_url: &str) -> AnyProvider {
    let config = Config::from_toml(
        &format!(
            "[providers.p]\nkind = \"{kind}\"\nbase_url = \"{base_url}\"\napi_key = \"k-123\"\n"
        ),
        &MapEnv::default(),
    )
    .unwrap();
    AnyProvider::from_config(&config.providers["p"]).unwrap()
}

/// A mock (requiring the key, so credentials are checked the dialect's way) and
/// an adapter of `kind` pointed at it.
async fn setup(kind: &str) -> (MockProvider, AnyProvider) {
    let mock = MockProvider::start(MockOptions::new("p").with_api_key("k-123"))
        .await
        .unwrap();
    let p = adapter_of(kind, &mock.base_url_for(kind));
    (mock, p)
}

fn request(prompt: &str) -> ChatRequest {
    serde_json::from_value(serde_json::json!({
        "model": "route", "messages": [{"role": "user", "content": prompt}]
    }))
    .unwrap()
}

fn cx(stream: bool) -> CallContext {
    CallContext {
        upstream_model: "upstream-model".into(),
        stream,
        credential: None,
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
    for kind in KINDS {
        let (_mock, p) = setup(kind).await;
        let plain = collect(&p, "hi [[mock:tokens=5]]", false).await.unwrap();
        assert_eq!(plain.len(), 1, "{kind}");
        assert_eq!(text(&plain), reply_text("hi", 5, 0), "{kind}");
        // Cohere's answers do not name the model.
        let served = plain[0].meta.as_ref().unwrap().served_model.as_deref();
        assert_eq!(
            served,
            (kind != "cohere").then_some("upstream-model"),
            "{kind}"
        );
        assert_eq!(
            plain[0].choices[0].finish_reason.as_deref(),
            Some("stop"),
            "{kind}"
        );
        let prompt = plain[0].usage.as_ref().unwrap().prompt_tokens();
        assert_eq!(plain[0].usage.as_ref().unwrap().output_tokens, 5, "{kind}");
        let streamed = collect(&p, "hi [[mock:tokens=5]]", true).await.unwrap();
        assert!(streamed.len() >= 5, "{kind}");
        assert_eq!(text(&streamed), reply_text("hi", 5, 0), "{kind}");
        assert!(
            streamed[0].meta.is_some() && streamed[1].meta.is_none(),
            "{kind}"
        );
        let usage = streamed
            .iter()
            .rev()
            .find_map(|c| c.usage)
            .expect("usage is always asked for in streams");
        assert_eq!(
            (usage.prompt_tokens(), usage.output_tokens),
            (prompt, 5),
            "{kind}"
        );
        let finish = streamed
            .iter()
            .flat_map(|c| &c.choices)
            .find_map(|c| c.finish_reason.clone());
        assert_eq!(finish.as_deref(), Some("stop"), "{kind}");
    }
}

#[tokio::test]
async fn cached_tokens_are_normalised_to_one_convention() {
    for kind in KINDS {
        let (_mock, p) = setup(kind).await;
        for stream in [false, true] {
            let chunks = collect(
                &p,
                "one two three four five six [[mock:cached_tokens=4]]",
                stream,
            )
            .await
            .unwrap();
            let u = chunks.iter().rev().find_map(|c| c.usage).unwrap();
            let cached = u.cached_input_tokens;
            // The mock counts 7 words (the directive is one) + 3 = 10 prompt
            // tokens; Cohere reports no cache.
            assert_eq!(
                u.prompt_tokens(),
                10,
                "{kind} stream={stream}: prompt includes cached"
            );
            let want = if kind == "cohere" { 0 } else { 4 };
            assert_eq!(cached, want, "{kind} stream={stream}");
        }
    }
}

#[tokio::test]
async fn anthropic_cache_writes_are_inside_the_prompt_and_reported_apart() {
    let (_mock, p) = setup("anthropic").await;
    let chunks = collect(
        &p,
        "a b c d e f g [[mock:cached_tokens=3,cache_write=2]]",
        false,
    )
    .await
    .unwrap();
    let u = chunks[0].usage.unwrap();
    assert_eq!(u.prompt_tokens(), 11, "8 words + 3, whatever was cached");
    assert_eq!(u.cached_input_tokens, 3);
    assert_eq!(u.cache_write_tokens, 2);
}

#[tokio::test]
async fn error_kinds_mean_the_same_in_every_dialect() {
    for kind in KINDS {
        let (_mock, p) = setup(kind).await;
        for (directive, code) in [
            ("error=rate_limit", ErrorCode::RateLimited),
            ("error=overloaded", ErrorCode::Overloaded),
            ("error=context_length", ErrorCode::ContextLengthExceeded),
            ("error=content_filter", ErrorCode::ContentFiltered),
            ("status=400", ErrorCode::ProviderError),
        ] {
            let e = collect(&p, &format!("x [[mock:{directive}]]"), false)
                .await
                .unwrap_err();
            assert_eq!(e.code(), code, "{kind} {directive}: {e}");
        }
    }
}

#[tokio::test]
async fn a_wrong_key_is_reported_without_echoing_it() {
    for kind in KINDS {
        let mock = MockProvider::start(MockOptions::new("p").with_api_key("right"))
            .await
            .unwrap();
        let p = adapter_of(kind, &mock.base_url_for(kind));
        let e = collect(&p, "x", false).await.unwrap_err();
        assert!(
            matches!(e, ProviderError::Upstream { status: 401, .. }),
            "{kind}: {e:?}"
        );
        assert!(!e.to_string().contains("k-123"), "{kind}");
    }
}

#[tokio::test]
async fn tool_calls_arrive_whole_or_in_pieces() {
    for kind in KINDS {
        let (_mock, p) = setup(kind).await;
        for stream in [false, true] {
            let chunks = collect(&p, "find the cat [[mock:tool_call=f]]", stream)
                .await
                .unwrap();
            let calls: Vec<_> = chunks
                .iter()
                .flat_map(|c| &c.choices)
                .flat_map(|c| c.delta.tool_calls.clone().unwrap_or_default())
                .collect();
            let args: String = calls
                .iter()
                .filter_map(|t| t.function.as_ref().and_then(|f| f.arguments.clone()))
                .collect();
            let args: serde_json::Value = serde_json::from_str(&args).unwrap();
            assert_eq!(
                args,
                serde_json::json!({"query": "find the cat"}),
                "{kind} stream={stream}"
            );
            assert!(calls[0].id.is_some(), "{kind}");
            assert_eq!(
                calls[0].function.as_ref().unwrap().name.as_deref(),
                Some("f"),
                "{kind}"
            );
            let finish = chunks
                .iter()
                .flat_map(|c| &c.choices)
                .find_map(|c| c.finish_reason.clone());
            assert_eq!(
                finish.as_deref(),
                Some("tool_calls"),
                "{kind} stream={stream}"
            );
        }
    }
}

#[tokio::test]
async fn rate_limit_and_server_errors_are_classified() {
    for kind in KINDS {
        let (_mock, p) = setup(kind).await;
        match collect(&p, "x [[mock:status=429,retry_after=2]]", true).await {
            Err(ProviderError::RateLimited { retry_after, .. }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(2)), "{kind}")
            }
            other => panic!("{kind}: expected RateLimited, got {other:?}"),
        }
        match collect(&p, "x [[mock:status=500]]", false).await {
            Err(ProviderError::Upstream { status: 500, .. }) => {}
            other => panic!("{kind}: expected Upstream 500, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_cut_stream_is_an_error_after_the_chunks_before_it() {
    for kind in KINDS {
        let (_mock, p) = setup(kind).await;
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
        assert!(ok >= 4, "{kind}: chunks before the cut arrive: {ok}");
        assert!(
            matches!(err, Some(ProviderError::StreamCut)),
            "{kind}: {err:?}"
        );
    }
}

#[tokio::test]
async fn refused_connection_is_a_connect_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for kind in KINDS {
        let p = adapter_of(kind, &format!("http://127.0.0.1:{port}/v1"));
        assert!(
            matches!(
                collect(&p, "x", false).await,
                Err(ProviderError::Connect(_))
            ),
            "{kind}"
        );
    }
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_upstream_call() {
    for kind in KINDS {
        let (mock, p) = setup(kind).await;
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
        assert_eq!(mock.stats().cancelled, 1, "{kind}");
    }
}

#[tokio::test]
async fn embeddings_come_back_in_input_order() {
    use sy_protocol::embeddings::{EmbeddingInput, EmbeddingsRequest};
    let req = |input: EmbeddingInput| EmbeddingsRequest {
        model: "route".into(),
        input,
        encoding_format: Some("base64".into()),
        dimensions: Some(4),
        user: None,
        extra: Default::default(),
    };
    for kind in ["openai_compatible", "gemini", "cohere"] {
        let (_mock, p) = setup(kind).await;
        let texts = vec!["first text".to_owned(), "second".to_owned()];
        let e = p
            .embed(&req(EmbeddingInput::Many(texts.clone())), &cx(false))
            .await
            .unwrap();
        let want: Vec<Vec<f32>> = texts
            .iter()
            .map(|t| sy_mock_provider::embedding_vector(t, 4))
            .collect();
        assert_eq!(e.vectors, want, "{kind}");
        let reported = e.usage.map(|u| u.prompt_tokens());
        // Gemini reports no usage; the worker estimates it.
        assert_eq!(reported, (kind != "gemini").then_some(3), "{kind}");
        let err = collect_embed_err(&p, "x [[mock:status=429]]").await;
        assert_eq!(err.code(), ErrorCode::RateLimited, "{kind}");
    }
    let (_mock, p) = setup("anthropic").await;
    let e = p
        .embed(&req(EmbeddingInput::One("x".into())), &cx(false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidRequest);
    let (_mock, p) = setup("gemini").await;
    let e = p
        .embed(&req(EmbeddingInput::Tokens(vec![1, 2])), &cx(false))
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Unsupported(_)), "{e:?}");
}

async fn collect_embed_err(p: &AnyProvider, text: &str) -> ProviderError {
    use sy_protocol::embeddings::{EmbeddingInput, EmbeddingsRequest};
    let req = EmbeddingsRequest {
        model: "route".into(),
        input: EmbeddingInput::One(text.into()),
        encoding_format: None,
        dimensions: None,
        user: None,
        extra: Default::default(),
    };
    p.embed(&req, &cx(false)).await.unwrap_err()
}

#[tokio::test]
async fn a_calls_own_credential_replaces_the_entrys_in_every_dialect() {
    for kind in KINDS {
        // The mock wants the org's key; the entry holds another.
        let mock = MockProvider::start(MockOptions::new("p").with_api_key("sk-org-own"))
            .await
            .unwrap();
        let p = adapter_of(kind, &mock.base_url_for(kind));
        let entry = p.chat(&request("hi"), &cx(false)).await;
        assert!(
            entry.is_err(),
            "{kind}: the entry's key must be refused here"
        );
        let own = CallContext {
            credential: Some(sy_providers::Credential("sk-org-own".into())),
            ..cx(false)
        };
        let mut s = p.chat(&request("hi"), &own).await.unwrap();
        assert!(s.next().await.unwrap().is_ok(), "{kind}");
        // Printing a call's context never shows its secret.
        assert!(!format!("{own:?}").contains("sk-org-own"), "{kind}");
    }
}
