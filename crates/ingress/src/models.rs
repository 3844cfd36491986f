//! `GET /v1/models` and `GET /v1/models/{id}`: the models, routers and
//! pipelines a key may name, in OpenAI's list shape, each with a
//! `switchyard` extension: what it is, which client APIs it serves, its
//! context window and what the caller pays per million tokens on each of
//! its targets (the price in effect now, times the caller's org's
//! multiplier: what its usage rows will be billed, never the provider's
//! cost). A model the key's scope does not allow is neither listed nor
//! found.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sy_protocol::ErrorCode;

use crate::error::ApiError;
use crate::extract::Caller;
use crate::state::{AppState, Routing};

/// The client APIs a model serving `chat` answers (translated to its
/// target's dialect).
const CHAT: [&str; 3] = ["chat.completions", "messages", "responses"];

/// `GET /v1/models`.
pub(crate) async fn list(State(state): State<Arc<AppState>>, caller: Caller) -> Response {
    let routing = state.routing();
    let mut ids: Vec<&str> = routing
        .models
        .keys()
        .chain(routing.routers.keys())
        .chain(routing.pipelines.keys())
        .map(String::as_str)
        .collect();
    let db = state.tenants.as_ref().map(|t| t.pipelines());
    ids.extend(db.iter().flat_map(|p| p.keys().map(String::as_str)));
    ids.sort_unstable();
    ids.dedup();
    let data: Vec<Value> = ids
        .into_iter()
        .filter(|id| caller.may_use(id).is_ok())
        .filter_map(|id| entry(&state, &routing, &caller, id))
        .collect();
    json_response(&json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`: one entry, or 404 in OpenAI's format.
pub(crate) async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    let routing = state.routing();
    match caller
        .may_use(&id)
        .ok()
        .and_then(|()| entry(&state, &routing, &caller, &id))
    {
        Some(v) => json_response(&v),
        None => ApiError {
            param: Some("model".into()),
            ..ApiError::new(
                ErrorCode::ModelNotFound,
                format!("The model '{id}' does not exist or this key may not use it."),
            )
        }
        .into_response(),
    }
}

fn json_response(v: &Value) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

/// The entry of `id`, if it is a model, router or pipeline.
fn entry(state: &AppState, routing: &Routing, caller: &Caller, id: &str) -> Option<Value> {
    // A router takes the kinds its routes name; a model what its targets serve.
    let mut routed: Option<Vec<&str>> = None;
    let (kind, targets): (&str, Vec<(&str, &str)>) = if let Some(m) = routing.models.get(id) {
        let t = m
            .targets
            .iter()
            .map(|t| (t.provider.as_str(), t.model.as_str()));
        ("model", t.collect())
    } else if let Some(r) = routing.routers.get(id) {
        let mut t: Vec<(&str, &str)> = Vec::new();
        let mut kinds: Vec<&str> = Vec::new();
        for route in &r.routes {
            for k in &route.kinds {
                if !kinds.contains(&k.as_str()) {
                    kinds.push(k);
                }
            }
            for target in &route.targets {
                let pair = (target.provider.as_str(), target.model.as_str());
                if !t.contains(&pair) {
                    t.push(pair);
                }
            }
        }
        routed = Some(kinds);
        ("router", t)
    } else {
        let p = state.pipeline(id)?;
        let steps: Vec<&str> = p.steps.iter().map(|s| s.name.as_str()).collect();
        return Some(json!({
            "id": id, "object": "model", "created": 0, "owned_by": "switchyard",
            "switchyard": {
                "kind": "pipeline",
                "surfaces": CHAT,
                "steps": steps,
                "description": p.description,
            },
        }));
    };
    let now = i64::try_from(sy_protocol::now_unix_ms()).unwrap_or(i64::MAX);
    let book = state.tenants.as_ref().map(|t| t.prices());
    let org = caller.grant.as_deref().map(|g| &g.pricing);
    let mut kinds: Vec<&str> = routed.clone().unwrap_or_default();
    let mut window: Option<u64> = None;
    let mut listed = Vec::with_capacity(targets.len());
    for (provider, model) in targets {
        let info = state
            .providers
            .get(provider)
            .and_then(|p| p.models.get(model));
        let serves = info.and_then(|i| i.serves.as_deref()).unwrap_or(&[]);
        let serves: Vec<&str> = if serves.is_empty() {
            vec!["chat"]
        } else {
            serves.iter().map(String::as_str).collect()
        };
        if routed.is_none() {
            for what in &serves {
                if !kinds.contains(what) {
                    kinds.push(what);
                }
            }
        }
        let context = info.and_then(|i| i.context_window);
        // The smallest window of its targets: a request longer than one
        // skips that target.
        window = match (window, context) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let price = book
            .as_deref()
            .and_then(|b| b.price_at(now, provider, model))
            .map(|(_, p)| p)
            .unwrap_or_else(|| {
                state
                    .providers
                    .get(provider)
                    .and_then(|p| p.prices.get(model))
                    .copied()
            });
        let multiplier = org
            .and_then(|o| o.multiplier(model))
            .unwrap_or(sy_control::pricing::AT_COST_PPB + state.markup_ppb);
        listed.push(json!({
            "provider": provider,
            "model": model,
            "serves": serves,
            "context_window": context,
            "pricing": price.map(|p| pricing(&p, multiplier)),
        }));
    }
    let surfaces: Vec<&str> = kinds
        .iter()
        .flat_map(|what| -> &[&str] {
            match *what {
                "chat" => &CHAT,
                "embeddings" => &["embeddings"],
                "rerank" => &["rerank"],
                "images" => &["images.generations", "images.edits"],
                "transcriptions" => &["audio.transcriptions", "audio.translations"],
                "speech" => &["audio.speech"],
                _ => &[],
            }
        })
        .copied()
        .collect();
    Some(json!({
        "id": id, "object": "model", "created": 0, "owned_by": "switchyard",
        "switchyard": {
            "kind": kind,
            "surfaces": surfaces,
            "context_window": window,
            "targets": listed,
        },
    }))
}

/// What the caller pays under `price` (nano-USD per million tokens, per
/// request, per image), as USD decimal strings; classes without a price
/// are left out.
fn pricing(price: &sy_protocol::price::Price, multiplier_ppb: i64) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("currency".into(), "USD".into());
    out.insert("per".into(), "1M tokens".into());
    for (name, nanos) in [
        ("input", price.input),
        ("cached_input", price.cached_input),
        ("cache_write", price.cache_write),
        ("cache_write_1h", price.cache_write_1h),
        ("output", price.output),
        ("reasoning_output", price.reasoning_output),
        ("per_request", price.per_request),
        ("per_image", price.per_image),
        ("per_search_unit", price.per_search_unit),
        ("per_output_image", price.per_output_image),
        ("per_audio_second", price.per_audio_second),
        ("per_character", price.per_character),
    ] {
        if nanos > 0 {
            let billed = sy_config::price::scale(nanos, multiplier_ppb);
            out.insert(name.into(), usd(billed).into());
        }
    }
    Value::Object(out)
}

/// Nano-USD as a decimal string without trailing zeros (`"0.15"`, `"2"`).
fn usd(nanos: i64) -> String {
    let s = sy_config::price::format_nanos(nanos);
    let s = s.trim_end_matches('0');
    s.strip_suffix('.').unwrap_or(s).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_read_as_short_decimals_scaled_by_the_multiplier() {
        assert_eq!(usd(150_000_000), "0.15");
        assert_eq!(usd(2_000_000_000), "2");
        assert_eq!(usd(0), "0");
        let price = sy_protocol::price::Price {
            input: 150_000_000,
            output: 600_000_000,
            ..Default::default()
        };
        // At cost, and at 120 %.
        let v = pricing(&price, 1_000_000_000);
        assert_eq!(
            v,
            json!({"currency": "USD", "per": "1M tokens", "input": "0.15", "output": "0.6"})
        );
        let v = pricing(&price, 1_200_000_000);
        assert_eq!(
            (v["input"].as_str(), v["output"].as_str()),
            (Some("0.18"), Some("0.72"))
        );
    }
}
