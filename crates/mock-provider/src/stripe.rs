//! A Stripe-like payment provider for tests and the local stack (issue 18):
//! Checkout Sessions created the way Stripe's API takes them (form-encoded,
//! a secret key as bearer, an `Idempotency-Key`), and a helper that pays a
//! session and delivers `checkout.session.completed` to a webhook, signed the
//! way Stripe signs it. Only what Switchyard uses; docs/mock-provider.md.
//!
//! - `POST /v1/checkout/sessions`: `mode=payment`, `client_reference_id`,
//!   `line_items[0][price_data][currency]`, `…[unit_amount]`,
//!   `line_items[0][quantity]`, `success_url`, `metadata[…]`; a bearer key
//!   starting `sk_` is required. The same `Idempotency-Key` with the same
//!   parameters answers the same session; with other parameters, a 400.
//! - `POST /mock/stripe/pay/{id}?webhook=<url>&secret=<whsec>`: marks the
//!   session paid (a PaymentIntent `pi_…`) and POSTs the signed event to
//!   `webhook`; answers the webhook's status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

#[derive(Default)]
struct Sessions {
    /// Idempotency key → (the request's parameters, the session id).
    by_key: HashMap<String, (Vec<(String, String)>, String)>,
    /// Session id → session.
    by_id: HashMap<String, Value>,
    made: u64,
    events: u64,
}

/// The Stripe-like routes, on their own state.
pub fn router(base: String) -> Router {
    let state = Arc::new((Mutex::new(Sessions::default()), base));
    Router::new()
        .route("/v1/checkout/sessions", post(create_session))
        .route("/mock/stripe/pay/{id}", post(pay))
        .with_state(state)
}

type Shared = Arc<(Mutex<Sessions>, String)>;

fn stripe_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"type": "invalid_request_error", "message": message}})),
    )
        .into_response()
}

async fn create_session(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !key.is_some_and(|k| k.starts_with("sk_")) {
        return stripe_error(StatusCode::UNAUTHORIZED, "Invalid API Key provided.");
    }
    let mut params: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    params.sort();
    let get = |k: &str| {
        params
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
    };
    let idempotency = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Ok(mut s) = state.0.lock() else {
        return stripe_error(StatusCode::INTERNAL_SERVER_ERROR, "poisoned");
    };
    if let Some((seen, id)) = idempotency.as_ref().and_then(|k| s.by_key.get(k)) {
        if *seen != params {
            return stripe_error(
                StatusCode::BAD_REQUEST,
                "Keys for idempotent requests can only be used with the same parameters they were first used with.",
            );
        }
        return axum::Json(s.by_id[id].clone()).into_response();
    }
    let amount = get("line_items[0][price_data][unit_amount]").and_then(|a| a.parse::<i64>().ok());
    let (Some(amount), Some(currency), Some("payment"), Some(_)) = (
        amount,
        get("line_items[0][price_data][currency]"),
        get("mode").as_deref(),
        get("success_url"),
    ) else {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            "mode=payment, success_url and line_items[0][price_data][currency|unit_amount] are required.",
        );
    };
    let quantity = get("line_items[0][quantity]")
        .and_then(|q| q.parse::<i64>().ok())
        .unwrap_or(1);
    s.made += 1;
    let id = format!("cs_test_{}", s.made);
    let metadata: serde_json::Map<String, Value> = params
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("metadata[")?.strip_suffix(']')?;
            Some((name.to_owned(), Value::from(v.clone())))
        })
        .collect();
    let session = json!({
        "id": id, "object": "checkout.session", "mode": "payment",
        "url": format!("{}/mock/stripe/pay/{id}", state.1),
        "client_reference_id": get("client_reference_id"),
        "amount_total": amount * quantity, "currency": currency.to_ascii_lowercase(),
        "payment_status": "unpaid", "status": "open", "payment_intent": null,
        "metadata": metadata,
    });
    s.by_id.insert(id.clone(), session.clone());
    if let Some(k) = idempotency {
        s.by_key.insert(k, (params, id));
    }
    axum::Json(session).into_response()
}

async fn pay(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (Some(webhook), Some(secret)) = (q.get("webhook"), q.get("secret")) else {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            "?webhook=<url>&secret=<whsec> are required.",
        );
    };
    let event = {
        let Ok(mut s) = state.0.lock() else {
            return stripe_error(StatusCode::INTERNAL_SERVER_ERROR, "poisoned");
        };
        s.events += 1;
        let n = s.events;
        let Some(session) = s.by_id.get_mut(&id) else {
            return stripe_error(StatusCode::NOT_FOUND, "No such checkout.session.");
        };
        session["payment_status"] = json!("paid");
        session["status"] = json!("complete");
        let number = id.trim_start_matches("cs_test_");
        session["payment_intent"] = json!(format!("pi_test_{number}"));
        json!({"id": format!("evt_test_{n}"), "object": "event",
               "type": "checkout.session.completed", "data": {"object": session.clone()}})
    };
    let body = event.to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signature = sy_billing::stripe::sign(body.as_bytes(), secret, now);
    match deliver(webhook, &signature, &body).await {
        Ok(status) => {
            axum::Json(json!({"event": event["id"], "webhook_status": status})).into_response()
        }
        Err(e) => stripe_error(
            StatusCode::BAD_GATEWAY,
            &format!("delivering the webhook: {e}"),
        ),
    }
}

/// POSTs `body` to `url` (plain HTTP) with Stripe's signature header; the
/// answer's status.
async fn deliver(url: &str, signature: &str, body: &str) -> anyhow::Result<u16> {
    crate::yookassa::post_json(url, &[("Stripe-Signature", signature)], body).await
}
