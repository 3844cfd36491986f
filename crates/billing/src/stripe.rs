//! Stripe webhooks: the `Stripe-Signature` header verified against the raw
//! body, and the events that move money read into [`Event`].
//!
//! Stripe signs `<t>.<raw body>` with HMAC-SHA-256 under the endpoint's
//! secret (`whsec_…`, used as it is) and sends `t=<unix s>,v1=<hex>[,v1=…]`;
//! while a secret is being rolled, several `v1` signatures come, one per
//! secret. A signature verifies when any `v1` matches any of the configured
//! secrets (compared in constant time) and `t` is within the tolerance of
//! now (300 s by default, as Stripe's libraries).

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::PaymentEvent as Event;

/// Stripe's libraries' default tolerance, seconds.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// Why a webhook's signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Stripe-Signature` header, or one without `t` or `v1`.
    #[error("the Stripe-Signature header is missing or malformed")]
    Malformed,
    /// `t` is further from now than the tolerance (a replay, or a clock).
    #[error("the signature's timestamp is {0} s away from now, beyond the tolerance")]
    Stale(u64),
    /// No `v1` signature matches any secret.
    #[error("no signature matches the endpoint's secrets")]
    Mismatch,
    /// No secret is configured: nothing can verify.
    #[error("no webhook secret is configured")]
    NoSecret,
}

/// Verifies `header` (the `Stripe-Signature` value) over `body` (the raw
/// request body, exactly as received) under any of `secrets`, at Unix second
/// `now`.
pub fn verify(
    header: &str,
    body: &[u8],
    secrets: &[&str],
    now: u64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    if secrets.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    let mut t: Option<&str> = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) if t.is_none() => t = Some(v),
            Some(("v1", v)) => signatures.push(decode_hex(v).ok_or(SignatureError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    let at: u64 = t.parse().map_err(|_| SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let skew = now.abs_diff(at);
    if skew > tolerance_secs {
        return Err(SignatureError::Stale(skew));
    }
    for secret in secrets {
        for sig in &signatures {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
                continue;
            };
            mac.update(t.as_bytes());
            mac.update(b".");
            mac.update(body);
            if mac.verify_slice(sig).is_ok() {
                return Ok(());
            }
        }
    }
    Err(SignatureError::Mismatch)
}

/// The `Stripe-Signature` value Stripe would send for `body` at `t` under
/// `secret` (for the mock and the tests).
pub fn sign(body: &[u8], secret: &str, t: u64) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return format!("t={t}"),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={hex}")
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Why an event's body cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable Stripe event: {0}")]
pub struct EventError(pub String);

/// Reads a verified event's body: `checkout.session.completed` (paid) and
/// `checkout.session.async_payment_succeeded` pay the order in
/// `client_reference_id`, `payment_intent.succeeded` the one in
/// `metadata.order_id`; `charge.refunded` says what was refunded in all,
/// `charge.dispute.created` what a chargeback takes (both name the charge's
/// `payment_intent`); anything else is kept, not acted on.
pub fn parse_event(body: &[u8]) -> Result<Event, EventError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| EventError(e.to_string()))?;
    let text = |v: &Value, field: &str| -> Option<String> {
        v.get(field).and_then(Value::as_str).map(str::to_owned)
    };
    let event_id = text(&v, "id")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| EventError("no event id".into()))?;
    let kind = text(&v, "type").ok_or_else(|| EventError("no event type".into()))?;
    let object = v
        .get("data")
        .and_then(|d| d.get("object"))
        .ok_or_else(|| EventError("no data.object".into()))?;
    let int = |field: &str| object.get(field).and_then(Value::as_i64);
    let need = |x: Option<String>, what: &str| x.ok_or_else(|| EventError(format!("no {what}")));
    let other = || Event::Other {
        event_id: event_id.clone(),
        kind: kind.clone(),
    };
    Ok(match kind.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            if text(object, "payment_status").as_deref() != Some("paid") {
                return Ok(other());
            }
            Event::Paid {
                order_id: need(text(object, "client_reference_id"), "client_reference_id")?,
                amount: int("amount_total").ok_or_else(|| EventError("no amount_total".into()))?,
                currency: need(text(object, "currency"), "currency")?,
                payment: text(object, "payment_intent")
                    .or_else(|| text(object, "id"))
                    .unwrap_or_default(),
                event_id,
            }
        }
        "payment_intent.succeeded" => Event::Paid {
            order_id: need(
                object
                    .get("metadata")
                    .and_then(|m| m.get("order_id"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                "metadata.order_id",
            )?,
            amount: int("amount_received")
                .ok_or_else(|| EventError("no amount_received".into()))?,
            currency: need(text(object, "currency"), "currency")?,
            payment: need(text(object, "id"), "id")?,
            event_id,
        },
        "charge.refunded" | "charge.dispute.created" => {
            let refund = kind == "charge.refunded";
            let field = if refund { "amount_refunded" } else { "amount" };
            Event::Reversed {
                payment: need(text(object, "payment_intent"), "payment_intent")?,
                amount: int(field).ok_or_else(|| EventError(format!("no {field}")))?,
                currency: need(text(object, "currency"), "currency")?,
                refund,
                event_id,
            }
        }
        _ => other(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_sy_local_dev";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"checkout.session.completed"}"#;

    #[test]
    fn a_signature_verifies_under_its_secret_and_nothing_else() {
        let now = 1_800_000_000;
        let header = sign(BODY, SECRET, now);
        assert_eq!(verify(&header, BODY, &[SECRET], now, 300), Ok(()));
        // Another body, another secret, a flipped bit: no.
        assert_eq!(
            verify(&header, b"{\"id\":\"evt_2\"}", &[SECRET], now, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&header, BODY, &["whsec_other"], now, 300),
            Err(SignatureError::Mismatch)
        );
        let mut flipped = header.clone();
        let last = flipped.pop().unwrap();
        flipped.push(if last == '0' { '1' } else { '0' });
        assert_eq!(
            verify(&flipped, BODY, &[SECRET], now, 300),
            Err(SignatureError::Mismatch)
        );
        // The timestamp is part of what is signed: moving it breaks the signature.
        let moved = header.replace(&format!("t={now}"), &format!("t={}", now + 1));
        assert_eq!(
            verify(&moved, BODY, &[SECRET], now, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn stale_malformed_and_unconfigured_signatures_are_refused() {
        let now = 1_800_000_000;
        let old = sign(BODY, SECRET, now - 301);
        assert_eq!(
            verify(&old, BODY, &[SECRET], now, 300),
            Err(SignatureError::Stale(301))
        );
        let future = sign(BODY, SECRET, now + 400);
        assert_eq!(
            verify(&future, BODY, &[SECRET], now, 300),
            Err(SignatureError::Stale(400))
        );
        assert_eq!(
            verify(&sign(BODY, SECRET, now - 300), BODY, &[SECRET], now, 300),
            Ok(())
        );
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "t=1,v1=abc"] {
            assert_eq!(
                verify(bad, BODY, &[SECRET], 1, 300),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        let header = sign(BODY, SECRET, now);
        assert_eq!(
            verify(&header, BODY, &[], now, 300),
            Err(SignatureError::NoSecret)
        );
    }

    #[test]
    fn while_a_secret_is_rolled_either_signature_and_either_secret_verify() {
        let now = 1_800_000_000;
        let old = sign(BODY, "whsec_old", now);
        let new = sign(BODY, "whsec_new", now);
        let v1 = |h: &str| h.split_once(",v1=").map(|(_, s)| s.to_owned()).unwrap();
        // Stripe sends one v1 per secret while both are live.
        let both = format!("t={now},v1={},v1={},v0=ignored", v1(&old), v1(&new));
        assert_eq!(verify(&both, BODY, &["whsec_new"], now, 300), Ok(()));
        assert_eq!(verify(&both, BODY, &["whsec_old"], now, 300), Ok(()));
        assert_eq!(
            verify(&old, BODY, &["whsec_new", "whsec_old"], now, 300),
            Ok(())
        );
        assert_eq!(
            verify(&both, BODY, &["whsec_third"], now, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn events_that_move_money_are_read_and_the_rest_are_not_acted_on() {
        let session = br#"{"id":"evt_a","type":"checkout.session.completed","data":{"object":{
            "id":"cs_1","client_reference_id":"ord_1","amount_total":1000,"currency":"usd",
            "payment_status":"paid","payment_intent":"pi_1"}}}"#;
        assert_eq!(
            parse_event(session).unwrap(),
            Event::Paid {
                event_id: "evt_a".into(),
                order_id: "ord_1".into(),
                amount: 1000,
                currency: "usd".into(),
                payment: "pi_1".into(),
            }
        );
        let unpaid = br#"{"id":"evt_b","type":"checkout.session.completed","data":{"object":{
            "client_reference_id":"ord_1","amount_total":1000,"currency":"usd","payment_status":"unpaid"}}}"#;
        assert!(matches!(parse_event(unpaid).unwrap(), Event::Other { .. }));
        let intent = br#"{"id":"evt_c","type":"payment_intent.succeeded","data":{"object":{
            "id":"pi_2","amount_received":2500,"currency":"eur","metadata":{"order_id":"ord_2"}}}}"#;
        assert_eq!(
            parse_event(intent).unwrap(),
            Event::Paid {
                event_id: "evt_c".into(),
                order_id: "ord_2".into(),
                amount: 2500,
                currency: "eur".into(),
                payment: "pi_2".into(),
            }
        );
        let refund = br#"{"id":"evt_d","type":"charge.refunded","data":{"object":{
            "id":"ch_1","payment_intent":"pi_1","amount_refunded":400,"currency":"usd"}}}"#;
        assert_eq!(
            parse_event(refund).unwrap(),
            Event::Reversed {
                event_id: "evt_d".into(),
                payment: "pi_1".into(),
                amount: 400,
                currency: "usd".into(),
                refund: true,
            }
        );
        let other = br#"{"id":"evt_e","type":"customer.created","data":{"object":{}}}"#;
        assert!(matches!(parse_event(other).unwrap(), Event::Other { .. }));
        // A paid event without the order or the amount cannot be acted on.
        for bad in [
            &br#"{"type":"payment_intent.succeeded","data":{"object":{}}}"#[..],
            br#"{"id":"evt_f","type":"payment_intent.succeeded","data":{"object":{"id":"pi","currency":"usd","amount_received":1}}}"#,
            br#"{"id":"evt_g","type":"checkout.session.completed","data":{"object":{"payment_status":"paid","client_reference_id":"o","currency":"usd"}}}"#,
            b"not json",
        ] {
            assert!(parse_event(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}

/// Stripe's API, for what Switchyard asks of it: Checkout Sessions.
#[derive(Debug, Clone)]
pub struct Checkout {
    /// `https://api.stripe.com` (or a mock's address).
    pub api_base: String,
    /// The account's secret key (`sk_…`).
    pub secret_key: String,
    /// Where the payer lands after paying.
    pub success_url: String,
    /// Where the payer lands after giving up.
    pub cancel_url: String,
}

/// A Checkout Session made for an order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Session {
    /// `cs_…`.
    pub id: String,
    /// Where the payer pays.
    pub url: String,
}

/// Why Stripe did not make a session.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// Stripe could not be reached, or answered something unreadable.
    #[error("Stripe could not be reached: {0}")]
    Unreachable(String),
    /// Stripe refused (its message).
    #[error("Stripe refused: {0}")]
    Refused(String),
}

impl Checkout {
    /// Makes the Checkout Session paying `order_id` (`amount` minor units of
    /// `currency`); the order's id is the idempotency key (asking twice makes
    /// one session), the session's `client_reference_id` and its
    /// PaymentIntent's `metadata.order_id` (how the webhook finds the order).
    pub async fn session(
        &self,
        http: &reqwest::Client,
        order_id: &str,
        amount: i64,
        currency: &str,
    ) -> Result<Session, CheckoutError> {
        let form = [
            ("mode", "payment".to_owned()),
            ("client_reference_id", order_id.to_owned()),
            ("success_url", self.success_url.clone()),
            ("cancel_url", self.cancel_url.clone()),
            ("line_items[0][quantity]", "1".to_owned()),
            ("line_items[0][price_data][currency]", currency.to_owned()),
            ("line_items[0][price_data][unit_amount]", amount.to_string()),
            (
                "line_items[0][price_data][product_data][name]",
                "Balance top-up".to_owned(),
            ),
            ("metadata[order_id]", order_id.to_owned()),
            (
                "payment_intent_data[metadata][order_id]",
                order_id.to_owned(),
            ),
        ];
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&form)
            .finish();
        let r = http
            .post(format!(
                "{}/v1/checkout/sessions",
                self.api_base.trim_end_matches('/')
            ))
            .bearer_auth(&self.secret_key)
            .header("idempotency-key", order_id)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| CheckoutError::Unreachable(e.to_string()))?;
        let ok = r.status().is_success();
        let v: Value = r
            .json()
            .await
            .map_err(|e| CheckoutError::Unreachable(e.to_string()))?;
        if !ok {
            let message = v["error"]["message"].as_str().unwrap_or("no message");
            return Err(CheckoutError::Refused(message.to_owned()));
        }
        serde_json::from_value(v).map_err(|e| CheckoutError::Unreachable(e.to_string()))
    }
}
