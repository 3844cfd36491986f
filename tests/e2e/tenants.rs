//! The control plane's database from the command line: `switchyard migrate`
//! applies the PostgreSQL migrations (crates/control) once.

use std::process::Command;

/// A schema of its own in the test database: a pool, its name, and a URL
/// whose connections use it.
async fn fresh_schema(prefix: &str) -> (sqlx::PgPool, String, String) {
    let url = sy_test_support::postgres_url();
    let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    let scoped = format!("{url}?options=-c%20search_path%3D{schema}");
    (pool, schema, scoped)
}

/// A config file holding only `[postgres] url = <url>`.
fn postgres_config(dir: &tempfile::TempDir, url: &str) -> std::path::PathBuf {
    let path = dir.path().join("pg.toml");
    std::fs::write(&path, format!("[postgres]\nurl = \"{url}\"\n")).unwrap();
    path
}

#[tokio::test]
async fn migrate_applies_the_postgres_migrations_once_and_never_prints_the_url() {
    let (pool, schema, scoped) = fresh_schema("m").await;
    let dir = tempfile::tempdir().unwrap();
    let path = postgres_config(&dir, &scoped);
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("--config")
            .arg(&path)
            .arg("migrate")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(!text.contains("switchyard:switchyard@"), "{text}");
        text
    };
    assert!(run().contains("applied postgres/0001_tenants"));
    assert!(run().contains("PostgreSQL database is up to date."));
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.tables \
         WHERE table_schema = $1 AND table_name IN ('orgs', 'projects', 'api_keys')",
    )
    .bind(&schema)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(n, 3);
}

#[tokio::test]
async fn admin_audit_verify_checks_the_chain_in_the_database_and_names_an_edited_row() {
    let (pool, schema, scoped) = fresh_schema("a").await;
    let store = sy_control::store::Store::connect(
        scoped.parse().unwrap(),
        sy_control::key::Pepper::new(vec![9u8; 32]).unwrap(),
        "test",
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let actor = sy_control::audit::Actor {
        identity: "ops".into(),
        role: "owner".into(),
    };
    let org = store.create_org(&actor, "Acme").await.unwrap();
    store.create_project(&actor, org, "p").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = postgres_config(&dir, &scoped);
    let verify = || {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("--config")
            .arg(&path)
            .args(["admin", "audit", "verify"])
            .output()
            .unwrap()
    };
    let out = verify();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("verifies: 2 rows"));
    sqlx::query(&format!(
        "UPDATE {schema}.audit_log SET actor = 'mallory' WHERE seq = 1"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let out = verify();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("audit row 1 does not match"),
        "{out:?}"
    );
}
