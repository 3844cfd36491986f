//! `model: "auto"` (and `"auto:<name>"`): the smart router's decision for a
//! request of any kind (chat, embeddings, rerank, images, audio), and
//! `POST /v1/route/explain`, which shows that decision without calling a
//! provider.
//!
//! Live state (health, load, time to first token) comes from the ingress's
//! [`sy_router::live::LiveTable`], fed by every worker's observations.

use serde_json::{Value, json};
use sy_classifier::{CLASSES, Class, Prediction};
use sy_config::ModelRoute;
use sy_config::routing::RouterConfig;
use sy_protocol::FallbackTarget;
use sy_protocol::chat::ChatRequest;
use sy_router::{Decision, Live, RouteRequest};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// Output tokens assumed when the client set no limit.
const DEFAULT_OUTPUT_TOKENS: u64 = 1024;

/// A cheap prompt-size estimate: about four characters per token.
pub fn estimate_input_tokens(req: &ChatRequest) -> u64 {
    let chars: usize = req.messages.iter().map(|m| m.text().chars().count()).sum();
    (chars as u64).div_ceil(4) + 3 * req.messages.len() as u64
}

/// Output tokens the router plans for: `max_tokens`, else 1,024.
pub fn expected_output_tokens(req: &ChatRequest) -> u64 {
    req.max_completion_tokens
        .or(req.max_tokens)
        .map_or(DEFAULT_OUTPUT_TOKENS, u64::from)
}

/// A request's kind and what it will be billed for, estimated before it
/// runs: what a router's routes match (`kinds`) and its `cheapest` and
/// `balanced` strategies compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size {
    /// The config's `serves`: `chat`, `embeddings`, `rerank`, `images`,
    /// `transcriptions` or `speech`.
    pub kind: &'static str,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub units: sy_protocol::price::Units,
}

impl Size {
    /// A chat request's: its estimated prompt and expected output.
    pub(crate) fn chat(req: &ChatRequest) -> Size {
        Size {
            kind: "chat",
            input_tokens: estimate_input_tokens(req),
            output_tokens: expected_output_tokens(req),
            units: sy_protocol::price::Units::default(),
        }
    }
}

/// A generator seeded by the request id: a request's draw is reproducible.
fn rng(request_id: Uuid) -> impl FnMut() -> f64 {
    sy_router::seeded_rng(request_id.as_u128() as u64)
}

fn task_type(req: &ChatRequest) -> Option<&str> {
    req.extra
        .get("metadata")
        .and_then(|m| m["task_type"].as_str())
}

/// The router's decision for `req` of `size` (a chat request has a `class`).
pub(crate) fn decide(
    state: &AppState,
    router: &RouterConfig,
    req: &ChatRequest,
    class: Option<Class>,
    size: &Size,
    request_id: Uuid,
    tags: &[(String, String)],
) -> Decision {
    let r = RouteRequest {
        kind: size.kind,
        class: class.map(Class::as_str),
        task_type: task_type(req),
        tags,
        input_tokens: size.input_tokens,
        output_tokens: size.output_tokens,
        units: size.units,
    };
    sy_router::decide(
        router,
        &state.providers,
        &r,
        &state.live.at(sy_protocol::now_unix_ms()),
        &mut rng(request_id),
    )
}

/// A named model's targets in the order to try them: config order, except that
/// targets that are unhealthy now go last (their outage costs no failed call
/// first; they stay as a last resort).
pub(crate) fn fixed_order(state: &AppState, route: &ModelRoute) -> Vec<FallbackTarget> {
    let live = state.live.at(sy_protocol::now_unix_ms());
    let (mut healthy, sick): (Vec<_>, Vec<_>) = route
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| FallbackTarget {
            provider: t.provider.clone(),
            upstream_model: t.model.clone(),
            rank: i as u32 + 1,
            pricing: None,
        })
        .partition(|t| live.unhealthy(&t.provider, &t.upstream_model).is_none());
    healthy.extend(sick);
    healthy
}

/// Load shedding: the first target of `order` whose provider can take the
/// request now (its queue below `max_queue`, its estimated wait within the
/// request's time), with the targets after it as the fallback order; 503 with
/// `Retry-After` when none can.
pub(crate) fn shed(
    state: &AppState,
    order: Vec<FallbackTarget>,
) -> Result<(FallbackTarget, Vec<FallbackTarget>), ApiError> {
    let live = state.live.at(sy_protocol::now_unix_ms());
    let budget = state.request_timeout.as_millis() as u64;
    let mut why = Vec::new();
    let mut order = order.into_iter();
    for t in order.by_ref() {
        let max_queue = state.providers.get(&t.provider).and_then(|p| p.max_queue);
        match live.shed(&t.provider, &t.upstream_model, max_queue, budget) {
            None => return Ok((t, order.collect())),
            Some(w) => why.push(format!("{}/{}: {w}", t.provider, t.upstream_model)),
        }
    }
    Err(ApiError {
        retry_after_secs: Some(1),
        ..ApiError::new(
            sy_protocol::ErrorCode::Overloaded,
            format!("Every target is overloaded now ({}).", why.join("; ")),
        )
    })
}

/// A 400 for a router none of whose routes takes `kind` requests, naming
/// the kinds it takes.
pub(crate) fn no_route(router: &RouterConfig, kind: &str) -> ApiError {
    let mut kinds: Vec<&str> = router
        .routes
        .iter()
        .flat_map(|r| r.kinds.iter().map(String::as_str))
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    ApiError::invalid(
        "model",
        format!(
            "'{}' routes no {kind} requests (it routes {}); name a model that serves {kind}, or give the router a route with kinds = [\"{kind}\"].",
            router.name,
            kinds.join(", ")
        ),
    )
}

/// The explain document for `req` of `size` (a chat request's class
/// predicted as `p`).
pub(crate) fn explain(
    state: &AppState,
    req: &ChatRequest,
    p: Option<&Prediction>,
    size: &Size,
    request_id: Uuid,
    tags: &[(String, String)],
) -> Result<Value, ApiError> {
    let mut doc = json!({
        "kind": size.kind,
        "class": p.map(|p| p.class.as_str()),
        "estimated_input_tokens": size.input_tokens,
        "expected_output_tokens": size.output_tokens,
        "model": req.model,
    });
    if let Some(p) = p {
        let probabilities: serde_json::Map<String, Value> = CLASSES
            .iter()
            .zip(p.probs)
            .map(|(c, x)| {
                (
                    c.as_str().to_owned(),
                    json!((x * 10_000.0).round() / 10_000.0),
                )
            })
            .collect();
        doc["class_source"] = json!(p.source);
        doc["probabilities"] = Value::Object(probabilities);
    }
    let units = size.units;
    for (name, n) in [
        ("estimated_search_units", units.search_units),
        ("images", units.output_images),
        ("estimated_audio_seconds", units.audio_seconds),
        ("characters", units.characters),
    ] {
        if n > 0 {
            doc[name] = json!(n);
        }
    }
    let routing = state.routing();
    if let Some(router) = routing.routers.get(&req.model) {
        let d = decide(
            state,
            router,
            req,
            p.map(|p| p.class),
            size,
            request_id,
            tags,
        );
        if d.route.is_empty() {
            return Err(no_route(router, size.kind));
        }
        let pick = |i: &usize| json!({"provider": d.candidates[*i].provider, "model": d.candidates[*i].model});
        doc["router"] = json!(d.router);
        doc["route"] = json!(d.route);
        doc["strategy"] = json!(d.strategy);
        doc["chosen"] = d.order.first().map_or(Value::Null, pick);
        doc["fallback"] = Value::Array(d.order.iter().skip(1).map(pick).collect());
        doc["candidates"] = serde_json::to_value(&d.candidates).unwrap_or_default();
    } else if let Some(route) = routing.models.get(&req.model) {
        let targets: Vec<Value> = fixed_order(state, route)
            .iter()
            .map(|t| json!({"provider": t.provider, "model": t.upstream_model, "rank": t.rank}))
            .collect();
        doc["router"] = Value::Null;
        doc["route"] = json!(route.name);
        doc["strategy"] = json!("fixed");
        doc["chosen"] = targets.first().cloned().unwrap_or(Value::Null);
        doc["fallback"] = Value::Array(targets.into_iter().skip(1).collect());
    } else {
        return Err(ApiError {
            param: Some("model".into()),
            ..ApiError::new(
                sy_protocol::ErrorCode::ModelNotFound,
                format!(
                    "The model '{}' does not exist or you do not have access to it.",
                    req.model
                ),
            )
        });
    }
    Ok(doc)
}
