//! The payment providers' webhook endpoints (issue 18), mounted on the
//! ingress without an API key: `POST /webhooks/stripe` (signed by Stripe)
//! and `POST /webhooks/yookassa` (not signed: taken only from YooKassa's
//! addresses, and believed only for what YooKassa's API says when asked
//! back). Each authenticated event is applied once by
//! [`Store::apply_payment`](crate::store::Store::apply_payment).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use serde_json::{Value, json};
use sy_billing::yookassa::{self, ApiError, Notice};
use sy_billing::{PaymentEvent, Provider};

use crate::payments::Applied;
use crate::store::{Store, StoreError};

/// The largest notification body read.
const MAX_BODY: usize = 256 * 1024;

fn answer(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

fn refused(status: StatusCode, kind: &str, message: String) -> Response {
    answer(status, json!({"error": {"type": kind, "message": message}}))
}

/// The answer to an authenticated event once applied: 200 with what came of
/// it (rejections too: the provider need not send those again), 503 when it
/// should come again (money back before its payment, or the database away).
fn applied(provider: Provider, event: &str, result: Result<Applied, StoreError>) -> Response {
    let received = |outcome: &str, extra: Value| {
        let mut v = json!({"received": true, "event": event, "outcome": outcome});
        if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            v.extend(extra.clone());
        }
        answer(StatusCode::OK, v)
    };
    match result {
        Ok(Applied::Credited { nanos, .. }) => received("credited", json!({"nanos": nanos})),
        Ok(Applied::Debited { nanos, .. }) => received("debited", json!({"nanos": nanos})),
        Ok(Applied::Nothing) => received("nothing", json!({})),
        Ok(Applied::Replayed) => received("replayed", json!({})),
        Ok(Applied::Rejected(why)) => received("rejected", json!({"reason": why})),
        Ok(Applied::Later(why)) => refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_yet",
            format!("{why}; send it again later"),
        ),
        Err(e) => {
            tracing::error!(provider = provider.as_str(), error = %e,
                "A payment event could not be applied; the provider sends it again.");
            refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "The payment store is unavailable; send it again later.".into(),
            )
        }
    }
}

/// Stripe's webhook endpoint, `POST /webhooks/stripe` (no API key: Stripe
/// signs it). The signature is checked over the raw body before anything
/// is read; an event that does not verify is refused (400) and never stored
/// (its id is not to be trusted: storing it could block the genuine event).
/// A verified event is applied once: 200 with what came of it, rejections
/// included; 503 when it should come again later, which Stripe does by
/// itself for days.
pub fn stripe<S: Clone + Send + Sync + 'static>(
    store: Store,
    config: &sy_config::StripeConfig,
) -> axum::Router<S> {
    let hook = Arc::new(StripeHook {
        store,
        secrets: config
            .webhook_secrets
            .iter()
            .map(|s| s.expose().to_owned())
            .collect(),
        tolerance_secs: config.tolerance.as_secs(),
    });
    axum::Router::new().route(
        "/webhooks/stripe",
        axum::routing::post(stripe_webhook).with_state(hook),
    )
}

struct StripeHook {
    store: Store,
    secrets: Vec<String>,
    tolerance_secs: u64,
}

async fn stripe_webhook(
    State(hook): State<Arc<StripeHook>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let secrets: Vec<&str> = hook.secrets.iter().map(String::as_str).collect();
    if let Err(e) = sy_billing::stripe::verify(header, &body, &secrets, now, hook.tolerance_secs) {
        tracing::warn!(error = %e, "A Stripe webhook was refused: its signature does not verify.");
        return refused(StatusCode::BAD_REQUEST, "invalid_signature", e.to_string());
    }
    let event = match sy_billing::stripe::parse_event(&body) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "A signed Stripe webhook could not be read.");
            return refused(StatusCode::BAD_REQUEST, "invalid_event", e.to_string());
        }
    };
    let result = hook.store.apply_payment(Provider::Stripe, &event).await;
    applied(Provider::Stripe, event.event_id(), result)
}

/// YooKassa's notification endpoint, `POST /webhooks/yookassa`. YooKassa
/// does not sign notifications, so nothing in one is believed:
///
/// 1. it is taken only from `notification_ips` (YooKassa's published
///    ranges; the connection's address, or behind `trusted_proxies` the
///    nearest untrusted `X-Forwarded-For` hop): 403 otherwise, not stored;
/// 2. only its event and object id are read; the payment is read back from
///    YooKassa's API (`GET /v3/payments/{id}`; a refund with
///    `GET /v3/refunds/{id}` and then its payment) and only that answer can
///    move money: a payment that is not `succeeded` credits nothing and is
///    not stored (its genuine notification still credits when it comes);
/// 3. the event from the answer is applied once, under
///    `payment.succeeded:<payment id>` / `refund.succeeded:<refund id>`; a
///    refund first applies its payment (as read back), so it never waits for
///    the payment's own notification; a payment (or refund) that is not a
///    top-up (no `metadata.order_id`: a shop shared with other sales) is
///    ignored and not stored.
///
/// YooKassa sends a notification again for 24 hours until it gets a 200:
/// 503 when YooKassa's API or the database cannot be reached.
pub fn yookassa<S: Clone + Send + Sync + 'static>(
    store: Store,
    config: &sy_config::YookassaConfig,
) -> Result<axum::Router<S>, String> {
    let hook = Arc::new(YookassaHook {
        store,
        client: crate::payments::yookassa_client(config),
        http: sy_billing::http_client()?,
        senders: config.notification_ips.clone(),
        proxies: config.trusted_proxies.clone(),
    });
    Ok(axum::Router::new().route(
        "/webhooks/yookassa",
        axum::routing::post(yookassa_webhook).with_state(hook),
    ))
}

struct YookassaHook {
    store: Store,
    client: yookassa::Client,
    http: reqwest::Client,
    senders: Vec<IpNet>,
    proxies: Vec<IpNet>,
}

/// Who sent a request: the connection's address or, when that is a trusted
/// proxy, the nearest `X-Forwarded-For` hop that is not one. None when a hop
/// is unreadable (then nobody can be believed).
fn sender(peer: Option<IpAddr>, headers: &HeaderMap, proxies: &[IpNet]) -> Option<IpAddr> {
    let trusted = |ip: &IpAddr| proxies.iter().any(|n| n.contains(ip));
    let mut ip = peer?.to_canonical();
    if !trusted(&ip) {
        return Some(ip);
    }
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        for hop in value.to_str().ok()?.split(',') {
            hops.push(hop.trim().parse::<IpAddr>().ok()?.to_canonical());
        }
    }
    for hop in hops.into_iter().rev() {
        ip = hop;
        if !trusted(&ip) {
            break;
        }
    }
    Some(ip)
}

/// The answer about a payment (or its refund) Switchyard did not make: a
/// shop shared with other sales. Not ours, not stored.
fn not_a_top_up() -> Response {
    answer(
        StatusCode::OK,
        json!({"received": true, "outcome": "ignored",
               "reason": "the payment is not a top-up"}),
    )
}

async fn yookassa_webhook(State(hook): State<Arc<YookassaHook>>, req: Request) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let from = sender(peer, req.headers(), &hook.proxies);
    if !from.is_some_and(|ip| hook.senders.iter().any(|n| n.contains(&ip))) {
        let from = from.map_or_else(|| "an unreadable address".to_owned(), |ip| ip.to_string());
        tracing::warn!(%from, "A YooKassa notification was refused: not from YooKassa's addresses.");
        return refused(
            StatusCode::FORBIDDEN,
            "forbidden_sender",
            format!("Notifications are taken only from YooKassa's addresses; {from} is not one."),
        );
    }
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                "invalid_notification",
                e.to_string(),
            );
        }
    };
    let notice = match yookassa::notice(&body) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "A YooKassa notification could not be read.");
            return refused(StatusCode::BAD_REQUEST, "invalid_notification", e);
        }
    };
    // Read back what the notification names; only YooKassa's answer counts.
    let read = match &notice {
        Notice::Other { event } => {
            return answer(
                StatusCode::OK,
                json!({"received": true, "event": event, "outcome": "ignored"}),
            );
        }
        Notice::Payment { id, .. } => match hook.client.payment(&hook.http, id).await {
            Ok(p) if p.order_id.is_none() => return not_a_top_up(),
            read => read.map(|p| (yookassa::paid_event(&p), p.status)),
        },
        Notice::Refund { id } => match hook.client.refund(&hook.http, id).await {
            Ok(r) => match hook.client.payment(&hook.http, &r.payment_id).await {
                Ok(p) if p.order_id.is_none() => return not_a_top_up(),
                Ok(p) => {
                    // The payment as YooKassa has it is known to have
                    // succeeded: apply it first (a replay if it was), so a
                    // refund that overtakes its payment's notification never
                    // waits for it.
                    if let Some(paid) = yookassa::paid_event(&p) {
                        let result = hook.store.apply_payment(Provider::Yookassa, &paid).await;
                        if result.is_err() {
                            return applied(Provider::Yookassa, paid.event_id(), result);
                        }
                    }
                    if r.status == "succeeded" && p.refunded < r.amount {
                        // Read a moment too early: YooKassa sends it again.
                        return refused(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not_yet",
                            "YooKassa's payment does not show this refund yet; send it again later"
                                .into(),
                        );
                    }
                    Ok((yookassa::refund_event(&r, &p), r.status))
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
    };
    let event: PaymentEvent = match read {
        Ok((Some(event), _)) => event,
        Ok((None, status)) => {
            // Nothing to credit (yet): not stored, so the genuine
            // notification still counts when it comes.
            return answer(
                StatusCode::OK,
                json!({"received": true, "outcome": "nothing",
                       "reason": format!("YooKassa says it is {status}")}),
            );
        }
        Err(ApiError::NotFound(what)) => {
            tracing::warn!(
                ?notice,
                "A YooKassa notification names no {what} YooKassa has."
            );
            return answer(
                StatusCode::OK,
                json!({"received": true, "outcome": "nothing",
                       "reason": format!("YooKassa has no such {what}")}),
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "A YooKassa notification could not be checked; YooKassa sends it again.");
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{e}; send it again later"),
            );
        }
    };
    let result = hook.store.apply_payment(Provider::Yookassa, &event).await;
    if let (PaymentEvent::Reversed { .. }, Ok(Applied::Later(why))) = (&event, &result) {
        // Its payment succeeded at YooKassa and was applied above, so an
        // order still unpaid is one whose payment was rejected (another
        // amount, another provider's order): money back for it moves
        // nothing here, and asking again would not change that.
        return answer(
            StatusCode::OK,
            json!({"received": true, "event": event.event_id(), "outcome": "nothing",
                   "reason": why}),
        );
    }
    applied(Provider::Yookassa, event.event_id(), result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sender_is_the_peer_or_the_nearest_untrusted_forwarded_hop() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let headers = |xff: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", xff.parse().unwrap());
            h
        };
        let none = HeaderMap::new();
        // Not a proxy: its own address, whatever it forwards.
        let spoofed = headers("185.71.76.1");
        assert_eq!(
            sender(Some(ip("203.0.113.9")), &spoofed, &proxies),
            Some(ip("203.0.113.9"))
        );
        // A trusted proxy: the hop before it; a client's own prefix is ignored.
        let chain = headers("185.71.76.1, 203.0.113.9, 10.1.1.1");
        assert_eq!(
            sender(Some(ip("10.0.0.2")), &chain, &proxies),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            sender(Some(ip("10.0.0.2")), &headers("185.71.76.1"), &proxies),
            Some(ip("185.71.76.1"))
        );
        // A proxy that forwards nothing is the sender itself; garbage is nobody.
        assert_eq!(
            sender(Some(ip("10.0.0.2")), &none, &proxies),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(
            sender(
                Some(ip("10.0.0.2")),
                &headers("185.71.76.1, junk"),
                &proxies
            ),
            None
        );
        assert_eq!(sender(None, &none, &proxies), None);
        // An IPv4 peer seen on an IPv6 socket is the IPv4 address.
        assert_eq!(
            sender(Some(ip("::ffff:185.71.76.1")), &none, &[]),
            Some(ip("185.71.76.1"))
        );
    }
}
