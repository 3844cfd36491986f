//! YooKassa (ЮKassa), for Russian customers: payments made through its API
//! v3 and its notifications, of which nothing is believed.
//!
//! - `POST {api_base}/v3/payments` with HTTP Basic auth (shop id : secret
//!   key), an `Idempotence-Key` (the order id: asking twice makes one
//!   payment) and `{amount: {value: "15.00", currency: "RUB"}, capture: true,
//!   confirmation: {type: "redirect", return_url}, description, metadata:
//!   {order_id}}`; the answer's `confirmation.confirmation_url` is where the
//!   payer pays.
//! - A notification (`{"type": "notification", "event": "payment.succeeded",
//!   "object": {…}}`) is not signed. It is taken only from YooKassa's
//!   published sender addresses (`sy_config::YOOKASSA_NOTIFICATION_RANGES`,
//!   the default of `[billing.yookassa] notification_ips`), and even then only
//!   the object's id is read from it: the payment is read again with
//!   `GET /v3/payments/{id}` (a refund with `GET /v3/refunds/{id}`), and only
//!   what YooKassa answers there moves money ([`paid_event`],
//!   [`refund_event`]).

use serde_json::{Value, json};

use crate::PaymentEvent;
use crate::money;

/// YooKassa's API, for what Switchyard asks of it.
#[derive(Debug, Clone)]
pub struct Client {
    /// `https://api.yookassa.ru` (or a mock's address).
    pub api_base: String,
    /// The shop's id (the Basic auth user).
    pub shop_id: String,
    /// The shop's secret key (the Basic auth password).
    pub secret_key: String,
    /// Where the payer lands after paying.
    pub return_url: String,
}

/// A payment, as `GET /v3/payments/{id}` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// YooKassa's id.
    pub id: String,
    /// `pending`, `waiting_for_capture`, `succeeded` or `canceled`.
    pub status: String,
    /// Whether it was paid.
    pub paid: bool,
    /// Minor units.
    pub amount: i64,
    /// Lowercase ISO code.
    pub currency: String,
    /// Refunded so far, minor units (`refunded_amount`).
    pub refunded: i64,
    /// `metadata.order_id`: the order it pays.
    pub order_id: Option<String>,
    /// Where the payer pays, while it is pending.
    pub confirmation_url: Option<String>,
}

/// A refund, as `GET /v3/refunds/{id}` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    /// YooKassa's id.
    pub id: String,
    /// The payment it refunds.
    pub payment_id: String,
    /// `pending`, `succeeded` or `canceled`.
    pub status: String,
    /// What it gives back, minor units (0 when unreadable).
    pub amount: i64,
}

/// Why YooKassa's API did not answer what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// It could not be reached, or answered a server error or something
    /// unreadable: ask again later.
    #[error("YooKassa could not be reached: {0}")]
    Unreachable(String),
    /// No such object.
    #[error("YooKassa has no such {0}")]
    NotFound(&'static str),
    /// It refused (its description).
    #[error("YooKassa refused: {0}")]
    Refused(String),
}

/// What a notification names; nothing else in it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A payment event (`payment.succeeded`, `payment.canceled`, …).
    Payment {
        /// The event's name.
        event: String,
        /// The payment's id.
        id: String,
    },
    /// `refund.succeeded`.
    Refund {
        /// The refund's id.
        id: String,
    },
    /// Anything else (payouts, deals): not acted on.
    Other {
        /// The event's name.
        event: String,
    },
}

/// Reads what a notification names: its event and its object's id. An id
/// that could not be YooKassa's (it goes into a URL path) is refused.
pub fn notice(body: &[u8]) -> Result<Notice, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let event = v
        .get("event")
        .and_then(Value::as_str)
        .ok_or("no event")?
        .to_owned();
    let id = v
        .get("object")
        .and_then(|o| o.get("id"))
        .and_then(Value::as_str);
    let id = |what: &str| -> Result<String, String> {
        let id = id.ok_or_else(|| format!("no {what} id"))?;
        if valid_id(id) {
            Ok(id.to_owned())
        } else {
            Err(format!("{what} id {id:?} is not an id"))
        }
    };
    Ok(if event.starts_with("payment.") {
        Notice::Payment {
            id: id("payment")?,
            event,
        }
    } else if event.starts_with("refund.") {
        Notice::Refund { id: id("refund")? }
    } else {
        Notice::Other { event }
    })
}

/// Whether `id` can be one of YooKassa's ids (letters, digits, `-`, `_`).
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `{"value": "15.00", "currency": "RUB"}` as (minor units, lowercase code).
fn amount(v: &Value) -> Option<(i64, String)> {
    let currency = v.get("currency")?.as_str()?.to_ascii_lowercase();
    let value = money::from_decimal(v.get("value")?.as_str()?, &currency)?;
    Some((value, currency))
}

/// Reads a payment object.
pub fn parse_payment(v: &Value) -> Result<Payment, String> {
    let text = |field: &str| v.get(field).and_then(Value::as_str).map(str::to_owned);
    let (paid_amount, currency) = amount(&v["amount"]).ok_or("no readable amount")?;
    let refunded = match v.get("refunded_amount") {
        None | Some(Value::Null) => 0,
        Some(r) => match amount(r) {
            Some((n, c)) if c == currency => n,
            _ => return Err("an unreadable refunded_amount".into()),
        },
    };
    Ok(Payment {
        id: text("id").ok_or("no id")?,
        status: text("status").ok_or("no status")?,
        paid: v.get("paid").and_then(Value::as_bool).unwrap_or(false),
        amount: paid_amount,
        currency,
        refunded,
        order_id: v
            .get("metadata")
            .and_then(|m| m.get("order_id"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        confirmation_url: v
            .get("confirmation")
            .and_then(|c| c.get("confirmation_url"))
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// Reads a refund object.
pub fn parse_refund(v: &Value) -> Result<Refund, String> {
    let text = |field: &str| v.get(field).and_then(Value::as_str).map(str::to_owned);
    Ok(Refund {
        id: text("id").ok_or("no id")?,
        payment_id: text("payment_id").ok_or("no payment_id")?,
        status: text("status").ok_or("no status")?,
        amount: amount(&v["amount"]).map_or(0, |(n, _)| n),
    })
}

/// The payment event a payment read from YooKassa's API amounts to: a
/// payment of its order only once it `succeeded` and is paid; none before.
/// Its event id is `payment.succeeded:<payment id>`, so every notification
/// of one payment is one event.
pub fn paid_event(p: &Payment) -> Option<PaymentEvent> {
    (p.status == "succeeded" && p.paid).then(|| PaymentEvent::Paid {
        event_id: format!("payment.succeeded:{}", p.id),
        order_id: p.order_id.clone().unwrap_or_default(),
        amount: p.amount,
        currency: p.currency.clone(),
        payment: p.id.clone(),
    })
}

/// The money-back event a succeeded refund amounts to: what its payment says
/// was refunded in all so far (so refunds seen in any order, or twice, debit
/// what came back, once). None unless the refund `succeeded` and is of `p`.
pub fn refund_event(r: &Refund, p: &Payment) -> Option<PaymentEvent> {
    // A payment that does not show this refund yet (read a moment too
    // early) is no answer: the caller asks again rather than debit less.
    let shown = p.refunded >= r.amount;
    (r.status == "succeeded" && r.payment_id == p.id && shown).then(|| PaymentEvent::Reversed {
        event_id: format!("refund.succeeded:{}", r.id),
        payment: p.id.clone(),
        amount: p.refunded,
        currency: p.currency.clone(),
        refund: true,
    })
}

impl Client {
    fn url(&self, path: &str) -> String {
        format!("{}/v3/{path}", self.api_base.trim_end_matches('/'))
    }

    /// Makes the payment of `order_id` (`amount` minor units of `currency`);
    /// the order's id is the `Idempotence-Key` and `metadata.order_id`.
    pub async fn create_payment(
        &self,
        http: &reqwest::Client,
        order_id: &str,
        amount: i64,
        currency: &str,
    ) -> Result<Payment, ApiError> {
        let body = json!({
            "amount": {"value": money::to_decimal(amount, currency),
                       "currency": currency.to_ascii_uppercase()},
            "capture": true,
            "confirmation": {"type": "redirect", "return_url": self.return_url},
            "description": format!("Balance top-up {order_id}"),
            "metadata": {"order_id": order_id},
        });
        let r = http
            .post(self.url("payments"))
            .basic_auth(&self.shop_id, Some(&self.secret_key))
            .header("idempotence-key", order_id)
            .json(&body)
            .send()
            .await;
        let v = answer(r, "payment").await?;
        let p = parse_payment(&v).map_err(ApiError::Unreachable)?;
        if p.confirmation_url.is_none() {
            return Err(ApiError::Unreachable("no confirmation_url".into()));
        }
        Ok(p)
    }

    /// The payment `id` as YooKassa has it now.
    pub async fn payment(&self, http: &reqwest::Client, id: &str) -> Result<Payment, ApiError> {
        if !valid_id(id) {
            return Err(ApiError::NotFound("payment"));
        }
        let r = http
            .get(self.url(&format!("payments/{id}")))
            .basic_auth(&self.shop_id, Some(&self.secret_key))
            .send()
            .await;
        parse_payment(&answer(r, "payment").await?).map_err(ApiError::Unreachable)
    }

    /// The refund `id` as YooKassa has it now.
    pub async fn refund(&self, http: &reqwest::Client, id: &str) -> Result<Refund, ApiError> {
        if !valid_id(id) {
            return Err(ApiError::NotFound("refund"));
        }
        let r = http
            .get(self.url(&format!("refunds/{id}")))
            .basic_auth(&self.shop_id, Some(&self.secret_key))
            .send()
            .await;
        parse_refund(&answer(r, "refund").await?).map_err(ApiError::Unreachable)
    }
}

/// YooKassa's answer as JSON, or why not.
async fn answer(
    r: Result<reqwest::Response, reqwest::Error>,
    what: &'static str,
) -> Result<Value, ApiError> {
    let r = r.map_err(|e| ApiError::Unreachable(e.to_string()))?;
    let status = r.status();
    let v: Value = r
        .json()
        .await
        .map_err(|e| ApiError::Unreachable(e.to_string()))?;
    match status.as_u16() {
        200..=299 => Ok(v),
        404 => Err(ApiError::NotFound(what)),
        400..=499 => Err(ApiError::Refused(
            v["description"]
                .as_str()
                .unwrap_or("no description")
                .to_owned(),
        )),
        s => Err(ApiError::Unreachable(format!("HTTP {s}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(status: &str, paid: bool) -> Value {
        json!({"id": "2f1c-0001", "status": status, "paid": paid,
               "amount": {"value": "1500.00", "currency": "RUB"},
               "refunded_amount": {"value": "200.50", "currency": "RUB"},
               "metadata": {"order_id": "ord_1"},
               "confirmation": {"type": "redirect", "confirmation_url": "https://yoomoney.ru/pay"}})
    }

    #[test]
    fn a_payment_credits_only_once_it_succeeded_and_is_paid() {
        let p = parse_payment(&payment("succeeded", true)).unwrap();
        assert_eq!(
            (p.amount, p.currency.as_str(), p.refunded),
            (150_000, "rub", 20_050)
        );
        assert_eq!(
            paid_event(&p),
            Some(PaymentEvent::Paid {
                event_id: "payment.succeeded:2f1c-0001".into(),
                order_id: "ord_1".into(),
                amount: 150_000,
                currency: "rub".into(),
                payment: "2f1c-0001".into(),
            })
        );
        for (status, paid) in [
            ("pending", false),
            ("waiting_for_capture", true),
            ("canceled", false),
            ("succeeded", false),
        ] {
            let p = parse_payment(&payment(status, paid)).unwrap();
            assert_eq!(paid_event(&p), None, "{status} {paid}");
        }
    }

    #[test]
    fn a_refund_debits_what_its_payment_says_came_back_in_all() {
        let p = parse_payment(&payment("succeeded", true)).unwrap();
        let r = parse_refund(
            &json!({"id": "rf-1", "payment_id": "2f1c-0001", "status": "succeeded",
                                      "amount": {"value": "100.00", "currency": "RUB"}}),
        )
        .unwrap();
        let Some(PaymentEvent::Reversed {
            amount,
            refund,
            event_id,
            ..
        }) = refund_event(&r, &p)
        else {
            panic!("a succeeded refund is money back");
        };
        assert_eq!(
            (amount, refund, event_id.as_str()),
            (20_050, true, "refund.succeeded:rf-1")
        );
        let other = Refund {
            payment_id: "someone-else".into(),
            ..r.clone()
        };
        assert_eq!(
            refund_event(&other, &p),
            None,
            "a refund of another payment"
        );
        let early = Refund {
            amount: 99_999_999,
            ..r.clone()
        };
        assert_eq!(
            refund_event(&early, &p),
            None,
            "not shown by its payment yet"
        );
        let pending = Refund {
            status: "pending".into(),
            ..r
        };
        assert_eq!(refund_event(&pending, &p), None);
    }

    #[test]
    fn a_notification_gives_only_an_event_name_and_an_id() {
        let n = |v: Value| notice(v.to_string().as_bytes());
        assert_eq!(
            n(json!({"type": "notification", "event": "payment.succeeded",
                     "object": {"id": "2f1c-0001", "amount": {"value": "999999.00"}}})),
            Ok(Notice::Payment {
                event: "payment.succeeded".into(),
                id: "2f1c-0001".into()
            })
        );
        assert_eq!(
            n(json!({"event": "refund.succeeded", "object": {"id": "rf-1"}})),
            Ok(Notice::Refund { id: "rf-1".into() })
        );
        assert_eq!(
            n(json!({"event": "payout.succeeded", "object": {"id": "po-1"}})),
            Ok(Notice::Other {
                event: "payout.succeeded".into()
            })
        );
        for bad in [
            json!({"object": {"id": "x"}}),
            json!({"event": "payment.succeeded"}),
            json!({"event": "payment.succeeded", "object": {"id": "../../v3/refunds"}}),
            json!({"event": "payment.succeeded", "object": {"id": "a?b=c"}}),
        ] {
            assert!(n(bad.clone()).is_err(), "{bad}");
        }
        assert!(notice(b"not json").is_err());
    }

    #[test]
    fn unreadable_payments_are_errors_not_zeroes() {
        for bad in [
            json!({"id": "p", "status": "succeeded", "paid": true}),
            json!({"id": "p", "status": "succeeded", "paid": true, "amount": {"value": "1.001", "currency": "RUB"}}),
            json!({"id": "p", "status": "succeeded", "paid": true, "amount": {"value": "1.00", "currency": "RUB"},
                   "refunded_amount": {"value": "1.00", "currency": "USD"}}),
            json!({"status": "succeeded", "paid": true, "amount": {"value": "1.00", "currency": "RUB"}}),
        ] {
            assert!(parse_payment(&bad).is_err(), "{bad}");
        }
    }
}
