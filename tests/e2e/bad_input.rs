//! Bad input gets an OpenAI error with the right status and never reaches a provider.

use serde_json::{Value, json};

use crate::stack::{KEY, Stack};

struct Case {
    name: &'static str,
    auth: Option<&'static str>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn case(name: &'static str, body: impl Into<Vec<u8>>, status: u16, code: &'static str) -> Case {
    Case {
        name,
        auth: Some(KEY),
        content_type: Some("application/json"),
        body: body.into(),
        status,
        code,
    }
}

#[tokio::test]
async fn every_bad_input_is_refused_before_the_provider() {
    let stack = Stack::start().await;
    let ok = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let huge = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(70_000)
    );
    let cases = vec![
        case("malformed JSON", "{\"model\": ", 400, "invalid_request"),
        case("not an object", "[1, 2, 3]", 400, "invalid_request"),
        case(
            "wrong type",
            r#"{"model":"gpt-4o-mini","messages":"hi"}"#,
            400,
            "invalid_request",
        ),
        case(
            "wrong type of temperature",
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"temperature":"warm"}"#,
            400,
            "invalid_request",
        ),
        case(
            "missing model",
            r#"{"messages":[{"role":"user","content":"hi"}]}"#,
            400,
            "invalid_request",
        ),
        case(
            "missing messages",
            r#"{"model":"gpt-4o-mini"}"#,
            400,
            "invalid_request",
        ),
        case(
            "empty messages",
            r#"{"model":"gpt-4o-mini","messages":[]}"#,
            400,
            "invalid_request",
        ),
        case(
            "bad role",
            r#"{"model":"gpt-4o-mini","messages":[{"role":"robot","content":"hi"}]}"#,
            400,
            "invalid_request",
        ),
        case(
            "out of range",
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"n":0}"#,
            400,
            "invalid_request",
        ),
        case(
            "unknown model",
            r#"{"model":"gpt-9","messages":[{"role":"user","content":"hi"}]}"#,
            404,
            "model_not_found",
        ),
        case("too large", huge, 413, "payload_too_large"),
        Case {
            auth: None,
            ..case("no key", ok, 401, "unauthenticated")
        },
        Case {
            auth: Some("sk-wrong-key-123"),
            ..case("wrong key", ok, 401, "unauthenticated")
        },
        Case {
            content_type: Some("text/plain"),
            ..case("wrong content type", ok, 415, "unsupported_media_type")
        },
        Case {
            // `curl -d` labels JSON a form, which is accepted; a real form is not JSON.
            content_type: Some("application/x-www-form-urlencoded"),
            ..case(
                "form body",
                b"model=gpt-4o-mini&stream=true",
                400,
                "invalid_request",
            )
        },
    ];
    for c in cases {
        let mut req = stack
            .http
            .post(stack.url("/v1/chat/completions"))
            .body(c.body.clone());
        if let Some(k) = c.auth {
            req = req.bearer_auth(k);
        }
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), c.status, "{}", c.name);
        assert!(
            resp.headers()
                .get(sy_protocol::header::REQUEST_ID)
                .is_some(),
            "{}",
            c.name
        );
        let v: Value = resp
            .json()
            .await
            .unwrap_or_else(|e| panic!("{}: body not JSON: {e}", c.name));
        assert_eq!(v["error"]["code"], c.code, "{}: {v}", c.name);
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            c.name
        );
        assert!(v["error"]["type"].is_string(), "{}", c.name);
    }
    assert_eq!(
        stack.mock.stats().requests,
        0,
        "no bad request may reach the provider"
    );
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    let stack = Stack::start().await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![b' '; 8192])).collect();
    let resp = stack
        .http
        .post(stack.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(stack.mock.stats().requests, 0);
}

#[tokio::test]
async fn missing_parameter_names_it() {
    let stack = Stack::start().await;
    let v: Value = stack
        .chat(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["error"]["param"], "model");
}

#[tokio::test]
async fn unknown_paths_and_methods_get_openai_errors() {
    let stack = Stack::start().await;
    let resp = stack.http.get(stack.url("/v1/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found");
    let resp = stack
        .http
        .get(stack.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "method_not_allowed");
}

/// Every /v1 route authenticates before its handler (issue 15): without a key
/// the answer is 401 in the route's format with a request id, whatever the
/// body; a method the route does not have is still 405.
#[tokio::test]
async fn every_v1_route_authenticates_first_and_names_the_request() {
    let stack = Stack::start().await;
    let routes: [(reqwest::Method, &str); 16] = [
        (reqwest::Method::POST, "/v1/chat/completions"),
        (reqwest::Method::POST, "/v1/messages"),
        (reqwest::Method::POST, "/v1/responses"),
        (reqwest::Method::POST, "/v1/embeddings"),
        (reqwest::Method::POST, "/v1/route/explain"),
        (reqwest::Method::GET, "/v1/route/targets"),
        (reqwest::Method::PUT, "/v1/route/targets"),
        (reqwest::Method::POST, "/v1/files"),
        (reqwest::Method::GET, "/v1/files"),
        (reqwest::Method::GET, "/v1/files/file-x"),
        (reqwest::Method::GET, "/v1/files/file-x/content"),
        (reqwest::Method::POST, "/v1/batches"),
        (reqwest::Method::GET, "/v1/batches/batch_x"),
        (reqwest::Method::POST, "/v1/batches/batch_x/cancel"),
        (reqwest::Method::GET, "/v1/models"),
        (reqwest::Method::GET, "/v1/usage"),
    ];
    for (method, path) in routes {
        let resp = stack
            .http
            .request(method.clone(), stack.url(path))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{method} {path}");
        assert!(
            resp.headers()
                .get(sy_protocol::header::REQUEST_ID)
                .is_some(),
            "{method} {path}"
        );
        let v: Value = resp.json().await.unwrap();
        if path == "/v1/messages" {
            assert_eq!(v["error"]["type"], "authentication_error", "{v}");
        } else {
            assert_eq!(
                v["error"]["code"], "unauthenticated",
                "{method} {path}: {v}"
            );
        }
    }
    let resp = stack
        .http
        .delete(stack.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(stack.upstream_requests(), 0);
}
