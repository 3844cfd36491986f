//! A YooKassa-like payment provider for tests and the local stack (issue
//! 18): payments made the way YooKassa's API v3 takes them (JSON, HTTP Basic
//! auth with a shop id and secret key, an `Idempotence-Key` required on
//! every POST), read back by id, and helpers that pay or refund a payment
//! and deliver YooKassa's (unsigned) notification to a webhook. Only what
//! Switchyard uses; docs/mock-provider.md.
//!
//! - `POST /v3/payments` `{amount: {value, currency}, confirmation: {type:
//!   "redirect", return_url}, metadata, …}`: a `pending` payment with a
//!   `confirmation_url`. The same `Idempotence-Key` with the same body
//!   answers the same payment; with another body, a 400.
//! - `GET /v3/payments/{id}`, `GET /v3/refunds/{id}`: as they are now.
//! - `POST /mock/yookassa/pay/{id}?webhook=<url>`: the payment `succeeded`;
//!   `payment.succeeded` is POSTed to `webhook`.
//! - `POST /mock/yookassa/refund/{id}?amount=<minor units>&webhook=<url>`: a
//!   `succeeded` refund (the payment's `refunded_amount` grows);
//!   `refund.succeeded` is POSTed to `webhook`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

#[derive(Default)]
struct Book {
    /// Idempotence key → (the request's body, the payment id).
    by_key: HashMap<String, (Value, String)>,
    payments: HashMap<String, Value>,
    refunds: HashMap<String, Value>,
    made: u64,
}

type Shared = Arc<(Mutex<Book>, String)>;

/// The YooKassa-like routes, on their own state.
pub fn router(base: String) -> Router {
    let state = Arc::new((Mutex::new(Book::default()), base));
    Router::new()
        .route("/v3/payments", post(create_payment))
        .route("/v3/payments/{id}", get(read_payment))
        .route("/v3/refunds/{id}", get(read_refund))
        .route("/mock/yookassa/pay/{id}", post(pay))
        .route("/mock/yookassa/refund/{id}", post(refund))
        .with_state(state)
}

/// YooKassa's error body.
fn error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"type": "error", "code": code, "description": description})),
    )
        .into_response()
}

/// Whether the request carries Basic auth with a shop id and a secret key.
fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .is_some_and(|b| !b.trim().is_empty())
}

async fn create_payment(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "Login and password required",
        );
    }
    let Some(key) = headers
        .get("idempotence-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Idempotence key is required",
        );
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Body is not JSON",
        );
    };
    let (Some(value), Some(currency), Some(return_url)) = (
        req["amount"]["value"].as_str(),
        req["amount"]["currency"].as_str(),
        req["confirmation"]["return_url"].as_str(),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "amount.value, amount.currency and confirmation.return_url are required",
        );
    };
    let Ok(mut book) = state.0.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            "poisoned",
        );
    };
    if let Some((seen, id)) = book.by_key.get(&key) {
        if *seen != req {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Idempotence key duplicated with other request parameters",
            );
        }
        return axum::Json(book.payments[id].clone()).into_response();
    }
    book.made += 1;
    let id = format!("2f{:06}-000f-5000-9000-{:012}", book.made, book.made);
    let payment = json!({
        "id": id, "status": "pending", "paid": false, "test": true,
        "amount": {"value": value, "currency": currency},
        "confirmation": {"type": "redirect", "return_url": return_url,
                         "confirmation_url": format!("{}/mock/yookassa/pay/{id}", state.1)},
        "description": req.get("description").cloned().unwrap_or(Value::Null),
        "metadata": req.get("metadata").cloned().unwrap_or_else(|| json!({})),
        "created_at": "2026-12-01T00:00:00.000Z", "refundable": false,
    });
    book.payments.insert(id.clone(), payment.clone());
    book.by_key.insert(key, (req, id));
    axum::Json(payment).into_response()
}

async fn read_payment(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    read(&state, &headers, |b| b.payments.get(&id).cloned())
}

async fn read_refund(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    read(&state, &headers, |b| b.refunds.get(&id).cloned())
}

fn read(
    state: &Shared,
    headers: &HeaderMap,
    find: impl FnOnce(&Book) -> Option<Value>,
) -> Response {
    if !authorized(headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "Login and password required",
        );
    }
    let Ok(book) = state.0.lock() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            "poisoned",
        );
    };
    match find(&book) {
        Some(v) => axum::Json(v).into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found", "Object not found"),
    }
}

/// Minor units as YooKassa writes them (two decimals).
fn decimal(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

/// YooKassa's decimal as minor units (two decimals).
fn minor(value: &str) -> Option<i64> {
    let (whole, frac) = value.split_once('.').unwrap_or((value, "0"));
    let frac = format!("{frac:0<2}");
    Some(whole.parse::<i64>().ok()? * 100 + frac.get(..2)?.parse::<i64>().ok()?)
}

async fn pay(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(webhook) = q.get("webhook") else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "?webhook=<url> is required",
        );
    };
    let payment = {
        let Ok(mut book) = state.0.lock() else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_server_error",
                "poisoned",
            );
        };
        let Some(p) = book.payments.get_mut(&id) else {
            return error(StatusCode::NOT_FOUND, "not_found", "Object not found");
        };
        p["status"] = json!("succeeded");
        p["paid"] = json!(true);
        p["refundable"] = json!(true);
        p["captured_at"] = json!("2026-12-01T00:01:00.000Z");
        p.clone()
    };
    notify(webhook, "payment.succeeded", payment).await
}

async fn refund(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (Some(webhook), Some(amount)) = (
        q.get("webhook"),
        q.get("amount").and_then(|a| a.parse::<i64>().ok()),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "?webhook=<url>&amount=<minor units> are required",
        );
    };
    let refund = {
        let Ok(mut book) = state.0.lock() else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_server_error",
                "poisoned",
            );
        };
        let n = book.refunds.len() + 1;
        let Some(p) = book.payments.get_mut(&id) else {
            return error(StatusCode::NOT_FOUND, "not_found", "Object not found");
        };
        let paid = p["amount"]["value"].as_str().and_then(minor).unwrap_or(0);
        let before = p["refunded_amount"]["value"]
            .as_str()
            .and_then(minor)
            .unwrap_or(0);
        if p["status"] != "succeeded" || amount < 1 || before + amount > paid {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Only a succeeded payment, and never more than was paid",
            );
        }
        let currency = p["amount"]["currency"].clone();
        p["refunded_amount"] = json!({"value": decimal(before + amount), "currency": currency});
        let refund = json!({
            "id": format!("rf{n:06}-0015-5000-9000-{n:012}"), "payment_id": id,
            "status": "succeeded", "created_at": "2026-12-01T00:02:00.000Z",
            "amount": {"value": decimal(amount), "currency": currency},
        });
        let rid = refund["id"].as_str().unwrap_or_default().to_owned();
        book.refunds.insert(rid, refund.clone());
        refund
    };
    notify(webhook, "refund.succeeded", refund).await
}

/// POSTs YooKassa's notification of `event` about `object` to `webhook`;
/// answers `{"event", "object", "webhook_status"}`.
async fn notify(webhook: &str, event: &str, object: Value) -> Response {
    let body = json!({"type": "notification", "event": event, "object": object});
    match post_json(webhook, &[], &body.to_string()).await {
        Ok(status) => axum::Json(json!({
            "event": event, "object": object["id"], "webhook_status": status,
        }))
        .into_response(),
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            "internal_server_error",
            &format!("delivering the notification: {e}"),
        ),
    }
}

/// POSTs JSON `body` to `url` (plain HTTP) with `headers`; the answer's
/// status.
pub(crate) async fn post_json(
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = url::Url::parse(url)?;
    anyhow::ensure!(url.scheme() == "http", "only http:// webhooks");
    let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = url.port().unwrap_or(80);
    let mut tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n\
         {extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        url.path(),
        body.len()
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await?;
    let line = String::from_utf8_lossy(&answer);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line"))?;
    Ok(status)
}
