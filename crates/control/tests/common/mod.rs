//! What the control plane's integration tests share: an actor, a pepper, and
//! a store on a schema of its own.
#![allow(dead_code, clippy::unwrap_used)] // each test file uses part of it

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sy_control::audit::Actor;
use sy_control::key::Pepper;
use sy_control::store::Store;

pub fn actor() -> Actor {
    Actor::local("test-owner", "owner")
}

pub fn pepper() -> Pepper {
    Pepper::new(*b"test pepper, 32 bytes or more...").unwrap()
}

/// A store on a fresh schema, migrated.
pub async fn store() -> Store {
    let base = PgConnectOptions::from_str(&sy_test_support::postgres_url()).unwrap();
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = Store::connect(base.clone(), pepper(), "test")
        .await
        .unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(admin.pool())
        .await
        .unwrap();
    let store = Store::connect(base.options([("search_path", &schema)]), pepper(), "test")
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

/// `org`'s stored balance, checked against the sum of its ledger rows (the
/// balance invariant: they must agree).
pub async fn balance(store: &Store, org: uuid::Uuid) -> i64 {
    let stored = store.balance(org).await.unwrap().balance_nanos;
    let sum = store.ledger_sum(org).await.unwrap();
    assert_eq!(stored, sum, "the stored balance is the sum of the ledger");
    stored
}

/// A fresh, migrated ClickHouse database on the shared server.
pub async fn clickhouse() -> sy_config::ClickhouseConfig {
    let c = clickhouse_unmade().await;
    sy_accounting::migrate(&c).await.unwrap();
    c
}

/// A fresh database name on the shared ClickHouse server, not made yet.
pub async fn clickhouse_unmade() -> sy_config::ClickhouseConfig {
    sy_test_support::require_clickhouse().await;
    sy_config::ClickhouseConfig {
        url: sy_test_support::clickhouse_url().parse().unwrap(),
        database: sy_test_support::unique_database(),
        user: "default".into(),
        password: None,
    }
}
