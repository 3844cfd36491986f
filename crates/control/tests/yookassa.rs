//! YooKassa against a real PostgreSQL and the YooKassa-like mock: a top-up
//! order made through YooKassa's API; notifications taken only from the
//! configured addresses and believed only for what the payment says when read
//! back; a payment credits once however often it is announced; refunds
//! debit what came back, in any order; a payment for an order made for
//! another provider or amount credits nothing and says why.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;

use serde_json::{Value, json};
use sy_control::admin::Admin;
use sy_control::payments::{NewOrder, Topups};
use sy_control::store::Store;
use sy_mock_provider::{MockOptions, MockProvider};
use uuid::Uuid;

/// $0.0125 per rouble, in nano-USD.
const RUB_RATE: i64 = 12_500_000;

struct Setup {
    store: Store,
    org: Uuid,
    mock: MockProvider,
    admin: std::sync::Arc<Admin>,
    /// The webhook taking notifications from 127.0.0.1.
    hook: String,
    /// The webhook taking them only from YooKassa's published ranges.
    strict_hook: String,
    http: reqwest::Client,
}

fn config(mock: &MockProvider, ips: &[&str]) -> sy_config::YookassaConfig {
    sy_config::YookassaConfig {
        api_base: format!("http://{}", mock.addr()),
        shop_id: "100500".into(),
        secret_key: sy_config::Secret::new("test_secret_key"),
        return_url: "http://127.0.0.1/done".into(),
        notification_ips: ips.iter().map(|n| n.parse().unwrap()).collect(),
        trusted_proxies: Vec::new(),
    }
}

/// Serves `/webhooks/yookassa` for `config`, with the client's address known.
async fn serve(store: &Store, config: &sy_config::YookassaConfig) -> String {
    let app = sy_control::webhooks::yookassa::<()>(store.clone(), config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    format!("http://{addr}/webhooks/yookassa")
}

async fn setup() -> Setup {
    let store = common::store().await;
    let org = store.create_org(&common::actor(), "Acme").await.unwrap();
    let mock = MockProvider::start(MockOptions::new("yookassa"))
        .await
        .unwrap();
    let loopback = config(&mock, &["127.0.0.1/32"]);
    let hook = serve(&store, &loopback).await;
    let strict_hook = serve(
        &store,
        &config(&mock, &sy_config::YOOKASSA_NOTIFICATION_RANGES),
    )
    .await;
    let topups = Topups {
        http: sy_test_support::http(),
        stripe: None,
        yookassa: Some(sy_billing::yookassa::Client {
            api_base: loopback.api_base.clone(),
            shop_id: loopback.shop_id.clone(),
            secret_key: "test_secret_key".into(),
            return_url: loopback.return_url.clone(),
        }),
        rates: sy_billing::money::Rates::new([("rub".to_owned(), RUB_RATE)].into()),
    };
    let admin = Admin::new(store.clone(), Vec::new(), None, None).with_topups(topups);
    Setup {
        store,
        org,
        mock,
        admin,
        hook,
        strict_hook,
        http: sy_test_support::http(),
    }
}

impl Setup {
    async fn top_up(&self, body: Value) -> Result<Value, String> {
        let body = axum::body::Bytes::from(body.to_string());
        sy_control::admin::top_up(&self.admin, &common::actor(), self.org, &body)
            .await
            .map_err(|e| format!("{e:?}"))
    }

    /// POSTs a notification (from 127.0.0.1) to `hook`.
    async fn notify(&self, hook: &str, event: &str, object: Value) -> (u16, Value) {
        let body = json!({"type": "notification", "event": event, "object": object});
        let r = self.http.post(hook).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// Asks the mock to pay `payment` (or refund `amount` of it) and notify.
    async fn mock(&self, action: &str, payment: &str, query: &str) -> Value {
        let url = format!(
            "http://{}/mock/yookassa/{action}/{payment}?webhook={}{query}",
            self.mock.addr(),
            self.hook
        );
        self.http
            .post(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The stored balance, checked against the ledger's sum.
    async fn balance(&self) -> i64 {
        common::balance(&self.store, self.org).await
    }

    async fn events(&self, payment: &str) -> i64 {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM payment_events WHERE provider = 'yookassa' AND event_id LIKE '%' || $1",
        )
        .bind(payment)
        .fetch_one(self.store.pool())
        .await
        .unwrap();
        n
    }
}

#[tokio::test]
async fn a_yookassa_payment_credits_once_and_only_when_yookassa_says_it_succeeded() {
    let s = setup().await;
    // 1,500.00 roubles at $0.0125: $18.75.
    let order = s
        .top_up(json!({"provider": "yookassa", "amount": 150_000, "currency": "RUB"}))
        .await
        .unwrap();
    assert_eq!(
        (
            order["provider"].as_str(),
            order["currency"].as_str(),
            order["status"].as_str()
        ),
        (Some("yookassa"), Some("rub"), Some("pending")),
        "{order}"
    );
    let id = order["order_id"].as_str().unwrap();
    let stored = s.store.order(id).await.unwrap().unwrap();
    assert_eq!(stored.credit_nanos, 18_750_000_000);
    let payment = stored.payment_ref.clone().unwrap();
    assert!(
        order["payment_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/mock/yookassa/pay/{payment}")),
        "{order}"
    );

    // A notification claiming success for a payment still pending: nothing,
    // and nothing stored (the genuine one must still count).
    let forged = json!({"id": payment, "status": "succeeded", "paid": true,
                        "amount": {"value": "1500.00", "currency": "RUB"}, "metadata": {"order_id": id}});
    let (status, v) = s.notify(&s.hook, "payment.succeeded", forged.clone()).await;
    assert_eq!(
        (status, v["outcome"].as_str()),
        (200, Some("nothing")),
        "{v}"
    );
    assert!(v["reason"].as_str().unwrap().contains("pending"), "{v}");
    // A payment YooKassa never made; an id that is no id.
    let (status, v) = s
        .notify(
            &s.hook,
            "payment.succeeded",
            json!({"id": "2f999999-000f-5000-9000-000000999999"}),
        )
        .await;
    assert_eq!(
        (status, v["outcome"].as_str()),
        (200, Some("nothing")),
        "{v}"
    );
    assert!(
        v["reason"].as_str().unwrap().contains("no such payment"),
        "{v}"
    );
    let (status, v) = s
        .notify(&s.hook, "payment.succeeded", json!({"id": "../refunds/x"}))
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!((s.balance().await, s.events(&payment).await), (0, 0));

    // Paid: a notification from outside YooKassa's addresses is refused and
    // stored nowhere; from an allowed address it credits once.
    let _ = s.mock("pay", &payment, "").await;
    let (status, v) = s
        .notify(&s.strict_hook, "payment.succeeded", forged.clone())
        .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["type"], "forbidden_sender");
    assert_eq!(
        s.balance().await,
        18_750_000_000,
        "the mock's own notification credited"
    );
    for _ in 0..10 {
        let (status, v) = s.notify(&s.hook, "payment.succeeded", forged.clone()).await;
        assert_eq!(
            (status, v["outcome"].as_str()),
            (200, Some("replayed")),
            "{v}"
        );
    }
    assert_eq!(s.balance().await, 18_750_000_000);
    assert_eq!(s.store.order(id).await.unwrap().unwrap().status, "paid");
    assert_eq!(s.events(&payment).await, 1);

    // Refunds: 500 roubles (a third), then 100 more; the first one's
    // notification again, late: it debits nothing more.
    let first = s.mock("refund", &payment, "&amount=50000").await;
    assert_eq!(first["webhook_status"], 200, "{first}");
    assert_eq!(s.balance().await, 12_500_000_000);
    let second = s.mock("refund", &payment, "&amount=10000").await;
    assert_eq!(second["webhook_status"], 200, "{second}");
    assert_eq!(s.balance().await, 11_250_000_000);
    let (status, v) = s
        .notify(
            &s.hook,
            "refund.succeeded",
            json!({"id": first["object"], "amount": {"value": "1500.00"}}),
        )
        .await;
    assert_eq!(
        (status, v["outcome"].as_str()),
        (200, Some("replayed")),
        "{v}"
    );
    assert_eq!(s.balance().await, 11_250_000_000);
    // Events YooKassa sends that move no money.
    let (status, v) = s
        .notify(&s.hook, "payout.succeeded", json!({"id": "po-1"}))
        .await;
    assert_eq!(
        (status, v["outcome"].as_str()),
        (200, Some("ignored")),
        "{v}"
    );
}

#[tokio::test]
async fn a_yookassa_payment_not_matching_its_order_credits_nothing_and_says_why() {
    let s = setup().await;
    let client = sy_billing::yookassa::Client {
        api_base: format!("http://{}", s.mock.addr()),
        shop_id: "100500".into(),
        secret_key: "test_secret_key".into(),
        return_url: "http://127.0.0.1/done".into(),
    };
    let http = sy_test_support::http();
    let order = |provider, amount| NewOrder {
        org: s.org,
        provider,
        amount,
        currency: "rub",
        credit_nanos: 1_000_000_000,
    };
    // An order made for Stripe, paid through YooKassa; a YooKassa order paid
    // with less than it is for.
    let for_stripe = s
        .store
        .create_order(&common::actor(), order(sy_billing::Provider::Stripe, 8000))
        .await
        .unwrap();
    let for_more = s
        .store
        .create_order(
            &common::actor(),
            order(sy_billing::Provider::Yookassa, 8000),
        )
        .await
        .unwrap();
    for (ord, amount, why) in [
        (&for_stripe, 8000, "was made for Stripe"),
        (&for_more, 7999, "is for 8000"),
    ] {
        let p = client
            .create_payment(&http, &ord.id, amount, "rub")
            .await
            .unwrap();
        let v = s.mock("pay", &p.id, "").await;
        assert_eq!(v["webhook_status"], 200, "{v}");
        let (outcome, reason): (String, String) = sqlx::query_as(
            "SELECT outcome, reason FROM payment_events WHERE provider = 'yookassa' AND event_id = $1",
        )
        .bind(format!("payment.succeeded:{}", p.id))
        .fetch_one(s.store.pool())
        .await
        .unwrap();
        assert_eq!(outcome, "rejected");
        assert!(reason.contains(why), "{reason}");
        // Its refund moves nothing and is not asked for again (200).
        let v = s.mock("refund", &p.id, "&amount=100").await;
        assert_eq!(v["webhook_status"], 200, "{v}");
    }
    assert_eq!(s.balance().await, 0);

    // Unpaid orders are capped per org and hour (each one is a provider call).
    let body = json!({"provider": "yookassa", "amount": 150_000, "currency": "rub"});
    let mut made = 0;
    let refused = loop {
        match s.top_up(body.clone()).await {
            Ok(_) => made += 1,
            Err(e) => break e,
        }
        assert!(made <= 20, "no cap");
    };
    // The two orders above are unpaid too.
    assert_eq!(made, 20 - 2, "{refused}");
    assert!(
        refused.contains("TOO_MANY_REQUESTS") || refused.contains("429"),
        "{refused}"
    );
    assert!(refused.contains("not paid yet"), "{refused}");

    // What cannot be a YooKassa top-up is refused before anything is made.
    for (body, says) in [
        (
            json!({"provider": "yookassa", "amount": 150_000, "currency": "eur"}),
            "'currency'",
        ),
        (
            json!({"provider": "yookassa", "amount": 10, "currency": "rub"}),
            "'amount'",
        ),
        (
            json!({"provider": "stripe", "amount": 1000, "currency": "usd"}),
            "[billing.stripe]",
        ),
    ] {
        let e = s.top_up(body.clone()).await.unwrap_err();
        assert!(e.contains(says), "{body}: {e}");
    }
}

#[tokio::test]
async fn a_refund_that_overtakes_its_payment_applies_both_and_others_refunds_are_ignored() {
    let s = setup().await;
    let order = s
        .top_up(json!({"provider": "yookassa", "amount": 150_000, "currency": "rub"}))
        .await
        .unwrap();
    let id = order["order_id"].as_str().unwrap();
    let payment = s
        .store
        .order(id)
        .await
        .unwrap()
        .unwrap()
        .payment_ref
        .unwrap();
    // Paid, but its notification never arrives (nothing listens there).
    let lost = format!(
        "http://{}/mock/yookassa/pay/{payment}?webhook=http://127.0.0.1:9/",
        s.mock.addr()
    );
    let _ = s.http.post(lost).send().await.unwrap();
    assert_eq!(s.balance().await, 0);
    // A refund of a third: its notification credits the payment and debits
    // the refund, in one go.
    let v = s.mock("refund", &payment, "&amount=50000").await;
    // Delivered again as YooKassa does until it gets a 200 (the first may
    // meet a database busy with the rest of the suite: 503, nothing done).
    let (status, again) = s
        .notify(&s.hook, "refund.succeeded", json!({"id": v["object"]}))
        .await;
    assert_eq!(status, 200, "{v} then {again}");
    assert!(
        ["replayed", "debited"].contains(&again["outcome"].as_str().unwrap_or("")),
        "{v} then {again}"
    );
    assert_eq!(s.balance().await, 18_750_000_000 - 6_250_000_000);
    assert_eq!(s.store.order(id).await.unwrap().unwrap().status, "paid");
    // The payment's own notification, late: a replay.
    let (_, v) = s
        .notify(&s.hook, "payment.succeeded", json!({"id": payment}))
        .await;
    assert_eq!(v["outcome"], "replayed", "{v}");
    assert_eq!(s.balance().await, 12_500_000_000);

    // A payment of the same shop that is not a top-up (no order in its
    // metadata): its refund is not Switchyard's business.
    let other: Value = s
        .http
        .post(format!("http://{}/v3/payments", s.mock.addr()))
        .basic_auth("100500", Some("test_secret_key"))
        .header("idempotence-key", "shop-sale-1")
        .json(&json!({"amount": {"value": "500.00", "currency": "RUB"},
                      "confirmation": {"type": "redirect", "return_url": "http://x/"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let other = other["id"].as_str().unwrap().to_owned();
    let _ = s
        .http
        .post(format!(
            "http://{}/mock/yookassa/pay/{other}?webhook=http://127.0.0.1:9/",
            s.mock.addr()
        ))
        .send()
        .await
        .unwrap();
    let (status, v) = s
        .notify(&s.hook, "payment.succeeded", json!({"id": other}))
        .await;
    assert_eq!(
        (status, v["outcome"].as_str()),
        (200, Some("ignored")),
        "{v}"
    );
    let v = s.mock("refund", &other, "&amount=100").await;
    assert_eq!(v["webhook_status"], 200, "{v}");
    let refund = v["object"].as_str().unwrap().to_owned();
    // Sent again by hand, to read the answer: ignored, and nothing stored.
    let (status, v) = s
        .notify(&s.hook, "refund.succeeded", json!({"id": refund}))
        .await;
    assert_eq!(
        (status, v["outcome"].as_str()),
        (200, Some("ignored")),
        "{v}"
    );
    assert_eq!((s.events(&other).await, s.events(&refund).await), (0, 0));
    assert_eq!(s.balance().await, 12_500_000_000);
}
