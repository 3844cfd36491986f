//! The ledger's consumer of the usage stream, on the real NATS and
//! PostgreSQL: a prepaid org's billed rows are debited once each, whether a
//! message carries one event or several (free cache hits' rows travel
//! together), and a message of free rows is skipped.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use sy_protocol::UsageEvent;

/// A usage event billed `billed` nano-USD against `org`'s balance.
fn billed(org: uuid::Uuid, billed: i64) -> UsageEvent {
    let org = org.to_string();
    let mut event = sy_test_support::usage_event_json(billed);
    event["limits"] = serde_json::json!({"org": org, "reserved_tokens": 12,
                   "budgets": [[sy_control::ledger::balance_key(&org), 0]]});
    serde_json::from_value(event).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billed_rows_are_debited_once_from_messages_of_one_event_or_many() {
    let store = common::store().await;
    let org = store.create_org(&common::actor(), "Prepaid").await.unwrap();
    let ns = sy_test_support::unique_namespace();
    let config = sy_config::Config::from_toml(
        &format!(
            "[nats]\nurl = \"{}\"\nnamespace = \"{ns}\"\n",
            sy_test_support::nats_url()
        ),
        &sy_config::MapEnv::default(),
    )
    .unwrap();
    let client = sy_test_support::nats().await;
    let bus = sy_bus::Bus::from_client(client.clone(), &config.nats);
    bus.ensure_usage_stream(Duration::from_secs(600))
        .await
        .unwrap();
    let ledger = tokio::spawn(sy_control::ledger::run(
        store.clone(),
        async_nats::jetstream::new(client.clone()),
        bus.subjects().usage_stream(),
    ));

    // One event; two in one message (sent twice: stored once); two free
    // rows in a message the ledger does not read.
    bus.publish_usage(&billed(org, 100)).await.unwrap();
    let two = [billed(org, 200), billed(org, 300)];
    bus.publish_usage_rows("batch-1", &two).await.unwrap();
    bus.publish_usage_rows("batch-1", &two).await.unwrap();
    bus.publish_usage_rows("batch-2", &[billed(org, 0), billed(org, 0)])
        .await
        .unwrap();

    let debits = || async {
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM ledger WHERE org_id = $1 AND kind = 'debit'")
                .bind(org)
                .fetch_one(store.pool())
                .await
                .unwrap();
        n
    };
    let until = Instant::now() + Duration::from_secs(20);
    while store.ledger_sum(org).await.unwrap() != -600 {
        assert!(Instant::now() < until, "{} debits", debits().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing more comes: each billed row once, the free ones never.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(common::balance(&store, org).await, -600);
    assert_eq!(debits().await, 3);
    ledger.abort();
    sy_test_support::delete_namespace(&client, &ns).await;
}
