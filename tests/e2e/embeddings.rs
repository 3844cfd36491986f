//! `POST /v1/embeddings` through the stack to OpenAI-compatible, Gemini and
//! Cohere embedding models, accounted like chat.

use base64::Engine;
use serde_json::{Value, json};

use crate::stack::{Stack, StackOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_embedding_dialect_answers_in_openais_format_and_is_accounted() {
    let stack = Stack::start_with(StackOptions {
        clickhouse: true,
        ..Default::default()
    })
    .await;
    let texts = ["a river in spring", "copper light"];
    for (model, provider) in [
        ("text-embedding-3-small", "openai"),
        ("gemini-embedding-001", "gemini"),
        ("embed-v4.0", "cohere"),
    ] {
        let resp = stack
            .http
            .post(stack.url("/v1/embeddings"))
            .bearer_auth(crate::stack::KEY)
            .json(&json!({"model": model, "input": texts, "dimensions": 6}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{model}");
        assert_eq!(resp.headers()["x-switchyard-provider"], provider);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["object"], "list");
        for (i, t) in texts.iter().enumerate() {
            assert_eq!(v["data"][i]["index"], i);
            let got: Vec<f32> = serde_json::from_value(v["data"][i]["embedding"].clone()).unwrap();
            assert_eq!(
                got,
                sy_mock_provider::embedding_vector(t, 6),
                "{model} input {i}"
            );
        }
        assert!(
            v["usage"]["prompt_tokens"].as_u64().unwrap() > 0,
            "{model}: {v}"
        );
    }
    // base64, as the openai SDK asks by default: little-endian f32.
    let v: Value = stack
        .http
        .post(stack.url("/v1/embeddings"))
        .bearer_auth(crate::stack::KEY)
        .json(&json!({"model": "embed-v4.0", "input": "copper light", "dimensions": 3, "encoding_format": "base64"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(
        floats,
        sy_mock_provider::embedding_vector("copper light", 3)
    );

    // One usage row per call, api = embeddings; Gemini's tokens are estimated.
    let rows: Vec<(String, String, u64, u64)> = stack
        .rows_until(
            "SELECT provider, input_tokens_source, input_tokens, output_tokens FROM {db}.requests FINAL \
             WHERE api = 'embeddings' ORDER BY received_ms",
            |rows: &[(String, String, u64, u64)]| rows.len() >= 4,
        )
        .await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(rows[0], ("openai".into(), "provider".into(), 6, 0));
    assert_eq!(rows[1].0, "gemini");
    assert_eq!(rows[1].1, "estimated");
    assert!(rows[1].2 > 0);
    assert_eq!(rows[2], ("cohere".into(), "provider".into(), 6, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_embedding_requests_are_refused_before_any_provider() {
    let stack = Stack::start().await;
    let post = |body: Value| {
        stack
            .http
            .post(stack.url("/v1/embeddings"))
            .bearer_auth(crate::stack::KEY)
            .json(&body)
            .send()
    };
    for (body, param) in [
        (json!({"model": "text-embedding-3-small"}), "input"),
        (
            json!({"model": "text-embedding-3-small", "input": []}),
            "input",
        ),
        (
            json!({"model": "text-embedding-3-small", "input": {"a": 1}}),
            "input",
        ),
        (
            json!({"model": "text-embedding-3-small", "input": "x", "encoding_format": "hex"}),
            "encoding_format",
        ),
        (json!({"model": "nope", "input": "x"}), "model"),
    ] {
        let resp = post(body.clone()).await.unwrap();
        assert!(resp.status() == 400 || resp.status() == 404, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }
    assert_eq!(stack.mock.stats().requests, 0);
    // A chat model of a dialect without embeddings: a clear 400, no provider call.
    let resp = post(json!({"model": "claude-sonnet-4-5", "input": "x"}))
        .await
        .unwrap();
    crate::stack::refused(resp, 400, "no embeddings").await;
    // A model declared to serve chat only is no embeddings model, and one
    // declared to serve embeddings takes no chat: 400s naming what each
    // serves, no provider call.
    let before = stack.mock.stats().requests;
    let resp = post(json!({"model": "gpt-4o-mini", "input": "x"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["param"], "model", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not serve embeddings requests; it serves chat"),
        "{v}"
    );
    let resp = stack
        .chat(&crate::stack::body("text-embedding-3-small", "hi"))
        .send()
        .await
        .unwrap();
    crate::stack::refused(
        resp,
        400,
        "does not serve chat requests; it serves embeddings",
    )
    .await;
    assert_eq!(stack.mock.stats().requests, before);
    // Token arrays go to OpenAI-compatible models; Gemini refuses them.
    let resp = post(json!({"model": "text-embedding-3-small", "input": [1, 2, 3]}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = post(json!({"model": "gemini-embedding-001", "input": [1, 2, 3]}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // Provider errors keep their meaning.
    let resp = post(json!({"model": "embed-v4.0", "input": "x [[mock:status=429]]"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
}
