//! Top-up orders and payment events against a real PostgreSQL: credited
//! exactly once however often and in whatever order events come; forged,
//! mismatched and cross-provider events credit nothing and are recorded
//! with their reason; refunds and chargebacks debit; the ledger adds up.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use sy_billing::{PaymentEvent, Provider};
use sy_control::payments::{Applied, NewOrder};
use sy_control::store::Store;
use uuid::Uuid;

const TEN_USD: i64 = 10_000_000_000;

async fn order(store: &Store, org: Uuid, provider: Provider) -> String {
    let new = NewOrder {
        org,
        provider,
        amount: 1000,
        currency: "USD",
        credit_nanos: TEN_USD,
    };
    store.create_order(&common::actor(), new).await.unwrap().id
}

fn paid(event: &str, order: &str, amount: i64, currency: &str, payment: &str) -> PaymentEvent {
    PaymentEvent::Paid {
        event_id: event.into(),
        order_id: order.into(),
        amount,
        currency: currency.into(),
        payment: payment.into(),
    }
}

fn refund(event: &str, payment: &str, in_all: i64) -> PaymentEvent {
    PaymentEvent::Reversed {
        event_id: event.into(),
        payment: payment.into(),
        amount: in_all,
        currency: "usd".into(),
        refund: true,
    }
}

async fn balance(store: &Store, org: Uuid) -> i64 {
    common::balance(store, org).await
}

async fn outcome(store: &Store, event: &str) -> (String, String) {
    sqlx::query_as(
        "SELECT outcome, reason FROM payment_events WHERE provider = 'stripe' AND event_id = $1",
    )
    .bind(event)
    .fetch_one(store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn a_payment_credits_its_order_once_however_often_and_in_whatever_order_it_comes() {
    let store = common::store().await;
    let org = store.create_org(&common::actor(), "Acme").await.unwrap();
    let ord = order(&store, org, Provider::Stripe).await;
    // Stripe announces one Checkout payment twice (two event ids) and
    // retries each: all of them at once, in no particular order.
    let intent = paid("evt_pi", &ord, 1000, "usd", "pi_1");
    let session = paid("evt_cs", &ord, 1000, "usd", "pi_1");
    let mut all = Vec::new();
    for _ in 0..10 {
        all.push(store.apply_payment(Provider::Stripe, &session));
        all.push(store.apply_payment(Provider::Stripe, &intent));
    }
    let all = futures::future::join_all(all).await;
    let credited: Vec<Applied> = all
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .filter(|a| matches!(a, Applied::Credited { .. }))
        .cloned()
        .collect();
    assert_eq!(
        credited,
        [Applied::Credited {
            org,
            nanos: TEN_USD
        }],
        "{all:?}"
    );
    assert!(all.iter().all(Result::is_ok), "{all:?}");
    assert_eq!(balance(&store, org).await, TEN_USD);
    assert_eq!(store.order(&ord).await.unwrap().unwrap().status, "paid");
    let outcomes = [
        outcome(&store, "evt_pi").await.0,
        outcome(&store, "evt_cs").await.0,
    ];
    assert!(
        outcomes.contains(&"credited".to_owned()) && outcomes.contains(&"nothing".to_owned()),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn forged_mismatched_and_cross_provider_events_credit_nothing_and_say_why() {
    let store = common::store().await;
    let org = store.create_org(&common::actor(), "Acme").await.unwrap();
    let ord = order(&store, org, Provider::Stripe).await;
    let theirs = order(&store, org, Provider::Yookassa).await;
    let cases = [
        (
            "evt_amount",
            paid("evt_amount", &ord, 999, "usd", "pi_1"),
            "is for 1000",
        ),
        (
            "evt_currency",
            paid("evt_currency", &ord, 1000, "eur", "pi_1"),
            "is in usd",
        ),
        (
            "evt_unknown",
            paid("evt_unknown", "ord_nope", 1000, "usd", "pi_1"),
            "no order ord_nope",
        ),
        (
            "evt_cross",
            paid("evt_cross", &theirs, 1000, "usd", "pi_1"),
            "made for Yookassa",
        ),
    ];
    for (id, event, why) in cases {
        let applied = store.apply_payment(Provider::Stripe, &event).await.unwrap();
        assert!(
            matches!(&applied, Applied::Rejected(r) if r.contains(why)),
            "{id}: {applied:?}"
        );
        let (stored, reason) = outcome(&store, id).await;
        assert_eq!(stored, "rejected", "{id}");
        assert!(reason.contains(why), "{id}: {reason}");
    }
    assert_eq!(balance(&store, org).await, 0);
    assert_eq!(store.order(&ord).await.unwrap().unwrap().status, "pending");
    // The genuine payment still credits afterwards.
    let good = paid("evt_good", &ord, 1000, "usd", "pi_1");
    assert!(matches!(
        store.apply_payment(Provider::Stripe, &good).await.unwrap(),
        Applied::Credited { .. }
    ));
}

#[tokio::test]
async fn refunds_and_chargebacks_debit_once_and_one_before_its_payment_waits() {
    let store = common::store().await;
    let org = store.create_org(&common::actor(), "Acme").await.unwrap();
    let ord = order(&store, org, Provider::Stripe).await;
    // A refund that overtakes its payment is not stored: sent again later.
    let early = refund("evt_r1", "pi_1", 400);
    assert!(matches!(
        store.apply_payment(Provider::Stripe, &early).await.unwrap(),
        Applied::Later(_)
    ));
    let pay = paid("evt_pay", &ord, 1000, "usd", "pi_1");
    store.apply_payment(Provider::Stripe, &pay).await.unwrap();
    // $4 of $10 back, then $7 in all: $3 more; replays change nothing.
    assert_eq!(
        store.apply_payment(Provider::Stripe, &early).await.unwrap(),
        Applied::Debited {
            org,
            nanos: 4_000_000_000
        }
    );
    assert_eq!(
        store.apply_payment(Provider::Stripe, &early).await.unwrap(),
        Applied::Replayed
    );
    let more = refund("evt_r2", "pi_1", 700);
    assert_eq!(
        store.apply_payment(Provider::Stripe, &more).await.unwrap(),
        Applied::Debited {
            org,
            nanos: 3_000_000_000
        }
    );
    // A chargeback takes what is left, never more than was paid.
    let dispute = PaymentEvent::Reversed {
        event_id: "evt_dp".into(),
        payment: "pi_1".into(),
        amount: 1000,
        currency: "usd".into(),
        refund: false,
    };
    assert_eq!(
        store
            .apply_payment(Provider::Stripe, &dispute)
            .await
            .unwrap(),
        Applied::Debited {
            org,
            nanos: 3_000_000_000
        }
    );
    assert_eq!(balance(&store, org).await, 0);
    assert_eq!(store.order(&ord).await.unwrap().unwrap().reversed, 1000);
}
