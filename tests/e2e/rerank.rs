//! `POST /v1/rerank` (and `/v2/rerank`) through the stack to a Cohere
//! reranker and an OpenAI-compatible (vLLM, Jina's shape) one: ranked best
//! first, falling back across them, accounted in search units or tokens,
//! and every bad body refused in Cohere's format before any provider.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use serde_json::{Value, json};

use crate::stack::{Stack, StackOptions};

async fn rerank(stack: &Stack, path: &str, body: Value) -> reqwest::Response {
    stack
        .http
        .post(stack.url(path))
        .bearer_auth(crate::stack::KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_ranks_through_cohere_and_an_openai_compatible_server_falls_back_and_is_accounted() {
    let stack = Stack::start_with(StackOptions {
        clickhouse: true,
        ..Default::default()
    })
    .await;
    let query = "copper light";
    let docs = ["a river in spring", "copper light at dusk", "light rain"];
    let score = |d: &str| sy_mock_provider::rerank_relevance(query, d);

    // Cohere, documents as texts and objects, the best two with their texts.
    let resp = rerank(
        &stack,
        "/v1/rerank",
        json!({"model": "rerank-v3.5", "query": query,
            "documents": [docs[0], {"text": docs[1]}, docs[2]],
            "top_n": 2, "return_documents": true}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-provider"], "cohere");
    let v: Value = resp.json().await.unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{v}");
    assert_eq!(results[0]["index"], 1, "{v}");
    assert_eq!(results[0]["document"]["text"], docs[1]);
    assert_eq!(results[0]["relevance_score"].as_f64(), Some(score(docs[1])));
    assert_eq!(results[1]["index"], 2, "{v}");
    assert_eq!(v["meta"]["billed_units"]["search_units"], 1, "{v}");
    assert_eq!(v["id"], "rerank-mock");

    // The OpenAI-compatible reranker on Cohere's v2 path: every document,
    // best first, no texts unless asked, tokens as it reports them.
    let resp = rerank(
        &stack,
        "/v2/rerank",
        json!({"model": "bge-reranker-v2-m3", "query": query, "documents": docs}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-provider"], "vllm");
    let v: Value = resp.json().await.unwrap();
    let order: Vec<u64> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    let mut expected = vec![0u64, 1, 2];
    expected.sort_by(|a, b| score(docs[*b as usize]).total_cmp(&score(docs[*a as usize])));
    assert_eq!(order, expected, "{v}");
    assert!(v["results"][0].get("document").is_none(), "{v}");
    // The mock counts each document's words with the query's: 6 + 6 + 4.
    assert_eq!(v["usage"]["total_tokens"], 16, "{v}");
    assert_eq!(v["model"], "bge-reranker-v2-m3");

    // Cohere failing: the request falls back to the vLLM reranker.
    let before = stack.dialect_mock("cohere").stats().faults;
    let resp = rerank(
        &stack,
        "/v1/rerank",
        json!({"model": "rerank-v3.5", "query": format!("{query} [[mock:status=500,only=cohere]]"),
            "documents": docs}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-provider"], "vllm");
    assert!(stack.dialect_mock("cohere").stats().faults > before);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 3, "{v}");

    // Usage rows: Cohere's in search units at $0.002 each (+20 % markup),
    // vLLM's in tokens at $0.02 a million; the failed attempts bill nothing.
    type Row = (String, String, u64, u64, Option<i64>, Option<i64>);
    type Raw = (String, String, u64, u64, String, String);
    let nanos = |s: String| sy_config::price::parse_nanos(&s);
    let raw: Vec<Raw> = stack
        .rows_until(
            "SELECT provider, status, search_units, input_tokens, \
             ifNull(toString(cost), ''), ifNull(toString(billed), '') \
             FROM {db}.requests FINAL WHERE api = 'rerank' ORDER BY received_ms, attempt",
            |rows: &[Raw]| rows.iter().filter(|r| r.1 == "ok").count() >= 3,
        )
        .await;
    let rows: Vec<Row> = raw
        .into_iter()
        .map(|(p, s, u, t, c, b)| (p, s, u, t, nanos(c), nanos(b)))
        .collect();
    let ok: Vec<&Row> = rows.iter().filter(|r| r.1 == "ok").collect();
    assert_eq!(ok.len(), 3, "{rows:?}");
    assert_eq!(ok[0].0, "cohere");
    assert_eq!(
        (ok[0].2, ok[0].4, ok[0].5),
        (1, Some(2_000_000), Some(2_400_000)),
        "{rows:?}"
    );
    assert_eq!((ok[1].0.as_str(), ok[1].2, ok[1].3), ("vllm", 0, 16));
    // 16 tokens at $0.02 a million: 320 nano-USD, 384 with the markup.
    assert_eq!((ok[1].4, ok[1].5), (Some(320), Some(384)), "{rows:?}");
    assert_eq!(ok[2].0, "vllm", "{rows:?}");
    for failed in rows.iter().filter(|r| r.1 != "ok") {
        assert_eq!(failed.0, "cohere", "{rows:?}");
        assert_eq!((failed.2, failed.4), (0, Some(0)), "{rows:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rerank_requests_are_refused_in_cohere_format_before_any_provider() {
    let stack = Stack::start().await;
    let before = stack.upstream_requests();
    let docs = json!(["a", "b"]);
    for (body, param) in [
        (json!({"model": "rerank-v3.5", "documents": docs}), "query"),
        (json!({"model": "rerank-v3.5", "query": "q"}), "documents"),
        (
            json!({"model": "rerank-v3.5", "query": "q", "documents": []}),
            "documents",
        ),
        (
            json!({"model": "rerank-v3.5", "query": "q", "documents": ["a", {"image": "x"}]}),
            "documents[1]",
        ),
        (
            json!({"model": "rerank-v3.5", "query": "q", "documents": docs, "top_n": 0}),
            "top_n",
        ),
        (
            json!({"model": "rerank-v3.5", "query": "q", "documents": docs, "return_documents": "yes"}),
            "return_documents",
        ),
        // A chat model and an embedding model serve no rerank.
        (
            json!({"model": "gpt-4o-mini", "query": "q", "documents": docs}),
            "model",
        ),
        (
            json!({"model": "text-embedding-3-small", "query": "q", "documents": docs}),
            "model",
        ),
    ] {
        let resp = rerank(&stack, "/v1/rerank", body.clone()).await;
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
        assert_eq!(v["message"], v["error"]["message"], "{v}");
    }
    let resp = rerank(
        &stack,
        "/v1/rerank",
        json!({"model": "gpt-4o-mini", "query": "q", "documents": docs}),
    )
    .await;
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("does not serve rerank requests; it serves chat"),
        "{v}"
    );
    // Not JSON, and an unknown model.
    let resp = stack
        .http
        .post(stack.url("/v2/rerank"))
        .bearer_auth(crate::stack::KEY)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("parse"), "{v}");
    let resp = rerank(
        &stack,
        "/v1/rerank",
        json!({"model": "no-such-reranker", "query": "q", "documents": docs}),
    )
    .await;
    assert_eq!(resp.status(), 404);
    assert_eq!(
        stack.upstream_requests(),
        before,
        "a bad rerank reached a provider"
    );
    // A model with no rerank API that declares nothing: refused by its
    // adapter without an HTTP call, as a 400 naming the dialect.
    let resp = rerank(
        &stack,
        "/v1/rerank",
        json!({"model": "claude-sonnet-4-5", "query": "q", "documents": docs}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("no rerank API"),
        "{v}"
    );
    assert_eq!(stack.upstream_requests(), before);
    assert_eq!(stack.dialect_mock("anthropic").stats().requests, 0);
}
