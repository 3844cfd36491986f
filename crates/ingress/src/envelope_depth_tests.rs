//! Whatever the ingress accepts, the worker can read: any body that passes
//! parsing on any surface still parses after the bus wraps it in an envelope.

use proptest::prelude::*;
use serde_json::{Value, json};
use sy_protocol::{ApiSurface, RequestEnvelope};

/// A JSON value: `wrappers` arrays (`true`) or objects (`false`) around a small tree.
fn wrapped(wrappers: &[bool], leaf: Value) -> Value {
    wrappers.iter().rev().fold(leaf, |inner, &array| {
        if array {
            json!([inner])
        } else {
            json!({ "k": inner })
        }
    })
}

fn leaf() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-z\\[\\]{}\"\\\\]{0,8}".prop_map(Value::String),
    ];
    scalar.prop_recursive(4, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies of every surface with `v` where clients put free-form JSON.
fn bodies(v: &Value) -> Vec<(ApiSurface, Value)> {
    let user = json!([{"role": "user", "content": "hi"}]);
    vec![
        (
            ApiSurface::ChatCompletions,
            json!({"model": "m", "messages": user, "x": v}),
        ),
        (
            ApiSurface::ChatCompletions,
            json!({"model": "m", "messages": user, "tools": [{"type": "function",
                "function": {"name": "f", "parameters": {"type": "object", "properties": {"p": v}}}}]}),
        ),
        (
            ApiSurface::ChatCompletions,
            json!({"model": "m", "messages": user, "response_format": {"type": "json_schema",
                "json_schema": {"name": "s", "schema": {"type": "object", "properties": {"p": v}}}}}),
        ),
        (
            ApiSurface::Messages,
            json!({"model": "m", "max_tokens": 5, "messages": user, "metadata": {"user_id": "u"},
                "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {"p": v}}}]}),
        ),
        (
            ApiSurface::Messages,
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "r"}]},
                {"type": "text", "text": "q", "x": v}]}]}),
        ),
        (
            ApiSurface::Responses,
            json!({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema",
                "name": "s", "schema": {"type": "object", "properties": {"p": v}}}}}),
        ),
        (
            ApiSurface::Responses,
            json!({"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f",
                "parameters": {"type": "object", "properties": {"p": v}}}]}),
        ),
        (ApiSurface::Embeddings, json!({"model": "m", "input": v})),
        (
            ApiSurface::Rerank,
            json!({"model": "m", "query": "q", "documents": ["a"], "x": v}),
        ),
        (
            ApiSurface::Images,
            json!({"model": "m", "prompt": "p", "style": v}),
        ),
        (
            ApiSurface::Speech,
            json!({"model": "m", "input": "hi", "voice": "alloy", "x": v}),
        ),
    ]
}

fn envelope(surface: ApiSurface, body: &[u8]) -> Option<RequestEnvelope> {
    let (request, payload) = crate::admission::parse(surface, body).ok()?;
    let (mut embeddings, mut rerank, mut images, mut speech) = (None, None, None, None);
    match payload {
        None => {}
        Some(crate::admission::Payload::Embeddings(e)) => embeddings = Some(e),
        Some(crate::admission::Payload::Rerank(r)) => rerank = Some(r),
        Some(crate::admission::Payload::Images(i)) => images = Some(i),
        Some(crate::admission::Payload::Speech(s)) => speech = Some(s),
        // Multipart: its fields are flat text.
        Some(crate::admission::Payload::Transcription(_)) => return None,
    }
    Some(RequestEnvelope {
        request_id: uuid::Uuid::now_v7(),
        attempt: 1,
        ingress_id: "i".into(),
        reply_to: "sy.reply.i.r".into(),
        received_unix_ms: 1,
        deadline_unix_ms: 2,
        key_id: "k".into(),
        org_id: None,
        project_id: None,
        api: surface,
        model: "m".into(),
        provider: "p".into(),
        upstream_model: "m".into(),
        request,
        embeddings,
        rerank,
        images,
        transcription: None,
        speech,
        class: None,
        choice: None,
        fallback: Vec::new(),
        fallback_reason: None,
        mid_stream: Default::default(),
        resume: None,
        fallback_on_refusal: false,
        watchdogs: Default::default(),
        batch: Some(sy_protocol::batch::BatchItem {
            batch_id: "b".into(),
            index: 0,
            custom_id: "c".into(),
        }),
        limits: None,
        pricing: None,
        tags: Vec::new(),
        pipeline: None,
        timing: false,
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_accepted_body_is_readable_by_the_worker(
        wrappers in prop::collection::vec(any::<bool>(), 0..140),
        leaf in leaf(),
    ) {
        let v = wrapped(&wrappers, leaf);
        for (surface, body) in bodies(&v) {
            let text = serde_json::to_vec(&body).expect("a Value serializes");
            let Some(env) = envelope(surface, &text) else { continue };
            let wire = serde_json::to_vec(&env).expect("an envelope serializes");
            let back = serde_json::from_slice::<RequestEnvelope>(&wire);
            prop_assert!(back.is_ok(), "{surface:?}: accepted but unreadable: {:?}", back.err());
            prop_assert_eq!(back.ok(), Some(env));
        }
    }
}

#[test]
fn bodies_at_the_depth_limit_are_accepted_and_one_deeper_refused() {
    let limit = sy_protocol::json::MAX_BODY_DEPTH;
    // The chat body's own object is one level: `x` holds the rest.
    for (depth, accepted) in [(limit, true), (limit + 1, false), (127, false)] {
        let v = wrapped(&vec![true; depth - 1], Value::Null);
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "x": v});
        let text = serde_json::to_vec(&body).expect("serializes");
        assert_eq!(
            sy_protocol::json::nesting_depth(&text, usize::MAX),
            Some(depth)
        );
        assert_eq!(
            envelope(ApiSurface::ChatCompletions, &text).is_some(),
            accepted,
            "depth {depth}"
        );
    }
}
