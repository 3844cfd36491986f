//! `POST /v1/images/generations` through the stack: OpenAI-compatible and
//! Gemini image models, small images inline and large ones through the
//! blob store, links signed and served by the ingress, fallback across
//! image targets, usage rows with images and tokens priced, and bad bodies
//! refused before any provider.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use base64::Engine;
use serde_json::{Value, json};

use crate::stack::{Stack, StackOptions};

async fn generate(stack: &Stack, body: Value) -> reqwest::Response {
    stack
        .http
        .post(stack.url("/v1/images/generations"))
        .bearer_auth(crate::stack::KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn decoded(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_come_back_inline_or_through_the_blob_store_fall_back_and_are_accounted() {
    let stack = Stack::start_with(StackOptions {
        clickhouse: true,
        ..Default::default()
    })
    .await;
    let png = sy_mock_provider::generated_png;

    // Small images ride in their frames: two, byte for byte.
    let prompt = "a lighthouse at dusk";
    let resp = generate(
        &stack,
        json!({"model": "gpt-image-1", "prompt": prompt, "n": 2, "size": "64x64"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-provider"], "openai");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2, "{v}");
    for i in 0..2 {
        assert_eq!(
            decoded(&v["data"][i]["b64_json"]),
            png(prompt, Some("64x64"), i)
        );
    }
    assert_eq!(v["data"][0]["revised_prompt"], format!("{prompt}, drawn"));
    assert_eq!(v["usage"]["output_tokens"], 200, "{v}");

    // A 512×512 image (about 1 MB of base64) goes through the blob store.
    let big = "a very large harbour";
    let resp = generate(
        &stack,
        json!({"model": "gpt-image-1", "prompt": big, "size": "512x512", "response_format": "b64_json"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let bytes = decoded(&v["data"][0]["b64_json"]);
    assert!(bytes.len() > 512 * 512 * 3);
    assert_eq!(bytes, png(big, Some("512x512"), 0));

    // Gemini sends bytes; a client asking for a link gets one signed by the
    // ingress, which serves the image until the link expires.
    let drawn = "tide pools";
    let resp = generate(
        &stack,
        json!({"model": "gemini-2.5-flash-image", "prompt": drawn, "size": "48x32", "response_format": "url"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-provider"], "gemini");
    let v: Value = resp.json().await.unwrap();
    let url = v["data"][0]["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("{}/v1/images/content/", stack.base)),
        "{url}"
    );
    // Gemini ignores the size: the mock draws its default 32×32.
    let got = stack.http.get(&url).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "image/png");
    assert_eq!(got.bytes().await.unwrap().to_vec(), png(drawn, None, 0));
    let forged = url.replace("signature=", "signature=0");
    assert_eq!(stack.http.get(&forged).send().await.unwrap().status(), 403);
    let other_name = url.replace("/content/img-", "/content/img-0");
    assert_eq!(
        stack.http.get(&other_name).send().await.unwrap().status(),
        403
    );
    let unsigned = url.split('?').next().unwrap();
    assert_eq!(stack.http.get(unsigned).send().await.unwrap().status(), 403);

    // A provider's own link passes through as it is.
    let resp = generate(
        &stack,
        json!({"model": "gpt-image-1", "prompt": "a map", "size": "16x16", "response_format": "url"}),
    )
    .await;
    let v: Value = resp.json().await.unwrap();
    let link = v["data"][0]["url"].as_str().unwrap();
    assert!(link.contains("/mock/images/"), "{v}");

    // OpenAI failing: the self-hosted image model serves.
    let before = stack.mock.stats().faults;
    let resp = generate(
        &stack,
        json!({"model": "gpt-image-1", "prompt": "a kite [[mock:status=500,only=openai]]", "size": "16x16"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-provider"], "vllm");
    assert!(stack.mock.stats().faults > before);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        decoded(&v["data"][0]["b64_json"]),
        png("a kite", Some("16x16"), 0)
    );

    // Usage rows: gpt-image-1 in tokens ($5 in, $40 out a million), the
    // fallback per image ($0.003), Gemini in tokens; +20 % markup.
    type Row = (String, String, u32, u64, u64, Option<i64>, Option<i64>);
    type Raw = (String, String, u32, u64, u64, String, String);
    let nanos = |s: String| sy_config::price::parse_nanos(&s);
    let raw: Vec<Raw> = stack
        .rows_until(
            "SELECT provider, status, output_images, input_tokens, output_tokens, \
             ifNull(toString(cost), ''), ifNull(toString(billed), '') \
             FROM {db}.requests FINAL WHERE api = 'images' ORDER BY received_ms, attempt",
            |rows: &[Raw]| rows.iter().filter(|r| r.1 == "ok").count() >= 5,
        )
        .await;
    let rows: Vec<Row> = raw
        .into_iter()
        .map(|(p, s, n, i, o, c, b)| (p, s, n, i, o, nanos(c), nanos(b)))
        .collect();
    let ok: Vec<&Row> = rows.iter().filter(|r| r.1 == "ok").collect();
    assert_eq!(ok.len(), 5, "{rows:?}");
    // Two images, 4 prompt words and 200 output tokens: 20 + 8,000 µ$.
    assert_eq!(
        (ok[0].0.as_str(), ok[0].2, ok[0].3, ok[0].4),
        ("openai", 2, 4, 200)
    );
    assert_eq!((ok[0].5, ok[0].6), (Some(8_020_000), Some(9_624_000)));
    assert_eq!((ok[2].0.as_str(), ok[2].2), ("gemini", 1), "{rows:?}");
    let fallback = ok[4];
    assert_eq!((fallback.0.as_str(), fallback.2), ("vllm", 1), "{rows:?}");
    assert_eq!((fallback.5, fallback.6), (Some(3_000_000), Some(3_600_000)));
    for failed in rows.iter().filter(|r| r.1 != "ok") {
        assert_eq!((failed.0.as_str(), failed.2), ("openai", 0), "{rows:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_image_requests_are_refused_before_any_provider() {
    let stack = Stack::start().await;
    let before = stack.upstream_requests();
    for (body, param) in [
        (json!({"model": "gpt-image-1"}), "prompt"),
        (json!({"prompt": "p"}), "model"),
        (json!({"model": "gpt-image-1", "prompt": "p", "n": 11}), "n"),
        (
            json!({"model": "gpt-image-1", "prompt": "p", "size": "huge"}),
            "size",
        ),
        (
            json!({"model": "gpt-image-1", "prompt": "p", "response_format": "gif"}),
            "response_format",
        ),
        (
            json!({"model": "gpt-image-1", "prompt": "p", "stream": true}),
            "stream",
        ),
        // A chat model draws nothing, and an image model does not chat.
        (json!({"model": "gpt-4o-mini", "prompt": "p"}), "model"),
    ] {
        let resp = generate(&stack, body.clone()).await;
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }
    let resp = stack
        .chat(&crate::stack::body("gpt-image-1", "hi"))
        .send()
        .await
        .unwrap();
    crate::stack::refused(resp, 400, "does not serve chat requests; it serves images").await;
    // Gemini draws one image a call.
    let resp = generate(
        &stack,
        json!({"model": "gemini-2.5-flash-image", "prompt": "p", "n": 2}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    // Anthropic has no image generation: its adapter refuses, no HTTP call.
    let resp = generate(&stack, json!({"model": "claude-sonnet-4-5", "prompt": "p"})).await;
    crate::stack::refused(resp, 400, "no image generation API").await;
    assert_eq!(
        stack.upstream_requests(),
        before,
        "a bad image request reached a provider"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_edits_upload_through_the_blob_store_fall_back_and_refuse_bad_forms() {
    use reqwest::multipart::{Form, Part};
    let stack = Stack::start().await;
    let png = |p: &str| sy_mock_provider::generated_png(p, Some("8x8"), 0);
    let (a, b, mask) = (png("a"), png("b"), png("m"));
    let part = |bytes: &Vec<u8>, name: &str| {
        Part::bytes(bytes.clone())
            .file_name(name.to_owned())
            .mime_str("image/png")
            .unwrap()
    };
    let form = |prompt: &str| {
        Form::new()
            .text("model", "gpt-image-1")
            .text("prompt", prompt.to_owned())
            .text("size", "16x16")
            .part("image[]", part(&a, "a.png"))
            .part("image[]", part(&b, "b.png"))
            .part("mask", part(&mask, "mask.png"))
    };
    let send = |f: Form| {
        stack
            .http
            .post(stack.url("/v1/images/edits"))
            .bearer_auth(crate::stack::KEY)
            .multipart(f)
            .send()
    };
    // Two images and a mask reach the provider whole; the edit comes back.
    let prompt = "add a red door";
    let resp = send(form(prompt)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-provider"], "openai");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        decoded(&v["data"][0]["b64_json"]),
        sy_mock_provider::edited_png(prompt, Some("16x16"), 0)
    );
    assert_eq!(
        v["data"][0]["revised_prompt"],
        format!(
            "{prompt}, edited from 2 images of {} bytes, masked",
            a.len() + b.len()
        )
    );
    // OpenAI failing: the self-hosted image model edits.
    let resp = send(form("add a window [[mock:status=500,only=openai]]"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-provider"], "vllm");

    let before = stack.upstream_requests();
    let base = || Form::new().text("model", "gpt-image-1").text("prompt", "p");
    for (f, param) in [
        (base(), "image"),
        (base().part("image", part(&a, "a.gif")), "image"),
        (
            base()
                .part("image", part(&a, "a.png"))
                .part("mask", part(&a, "m.jpg")),
            "mask",
        ),
        (
            base().part("image", part(&a, "a.png")).text("n", "many"),
            "n",
        ),
        (
            Form::new()
                .text("model", "gpt-image-1")
                .part("image", part(&a, "a.png")),
            "prompt",
        ),
    ] {
        let resp = send(f).await.unwrap();
        assert_eq!(resp.status(), 400, "{param}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["param"], param, "{v}");
    }
    assert_eq!(
        stack.upstream_requests(),
        before,
        "a bad edit reached a provider"
    );
    // Gemini has no edit API here: refused without a call.
    let resp = send(
        Form::new()
            .text("model", "gemini-2.5-flash-image")
            .text("prompt", "p")
            .part("image", part(&a, "a.png")),
    )
    .await
    .unwrap();
    crate::stack::refused(resp, 400, "no image edit API").await;
    assert_eq!(stack.upstream_requests(), before);
}
