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
