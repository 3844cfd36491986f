//! Budget reconciliation on the real PostgreSQL, ClickHouse and Redis: a
//! round that fails is tried again within seconds, not a whole period later
//! (until a round marks an org's budgets restored, its budgeted requests are
//! refused).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use serde_json::json;
use sy_control::views::{LimitChange, LimitTarget};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_round_is_tried_again_within_seconds_not_a_period_later() {
    let store = common::store().await;
    let org = store
        .create_org(&common::actor(), "Budgeted")
        .await
        .unwrap();
    let change = LimitChange {
        budget: Some(json!({"usd": "10", "period": "month"})),
        ..LimitChange::default()
    };
    store
        .set_limits(&common::actor(), LimitTarget::Org(org), &change)
        .await
        .unwrap();
    // A ClickHouse database not made yet: the rounds fail until it is.
    let ch = common::clickhouse_unmade().await;
    let limiter = sy_limits::Limiter::connect_or_retry(sy_test_support::redis_url()).await;
    let redis = redis::Client::open(sy_test_support::redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    // This Redis has been reconciled before (else every second's check for a
    // lost Redis would start a round too).
    let _: () = redis::cmd("SET")
        .arg(sy_limits::RECONCILED_KEY)
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let ready_key = sy_limits::ready_key(&org.to_string());
    let ready = || {
        let (mut conn, key) = (conn.clone(), ready_key.clone());
        async move {
            let n: i64 = redis::cmd("EXISTS")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            n == 1
        }
    };
    // The period is an hour: only a retry can restore the org in time.
    let rounds = tokio::spawn(sy_control::reconcile::run(
        store.clone(),
        ch.clone(),
        limiter,
        Duration::from_secs(3600),
        None,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!ready().await, "no round can have succeeded yet");
    sy_accounting::migrate(&ch).await.unwrap();
    // Retries come 1, 3, 7, 15 s after the first round: by the third or
    // fourth, whatever the migrations took on a busy box.
    let until = Instant::now() + Duration::from_secs(20);
    while !ready().await {
        assert!(
            Instant::now() < until,
            "the org's budgets are still not restored 20 s after ClickHouse came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rounds.abort();
}
