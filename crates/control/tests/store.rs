//! The tenants' store against a real PostgreSQL (scripts/test.sh starts one;
//! `SY_POSTGRES_URL` names it). Each test migrates a schema of its own.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{actor, pepper, store};
use sy_control::audit::{self, Broken};
use sy_control::key::KeyError;
use sy_control::keytable::{KeyTable, Refused};
use sy_control::store::{KeySpec, Store, StoreError};

/// Every row of every table of the store's schema, as JSON text.
async fn dump(store: &Store) -> String {
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(tables.iter().any(|(t,)| t == "api_keys"), "{tables:?}");
    let mut out = String::new();
    for (t,) in tables {
        let rows: Vec<(String,)> =
            sqlx::query_as(&format!("SELECT row_to_json(x)::text FROM \"{t}\" x"))
                .fetch_all(store.pool())
                .await
                .unwrap();
        for (r,) in rows {
            out.push_str(&r);
            out.push('\n');
        }
    }
    out
}

#[tokio::test]
async fn a_key_is_shown_once_and_no_table_holds_its_secret() {
    let s = store().await;
    let org = s.create_org(&actor(), "Acme").await.unwrap();
    let project = s.create_project(&actor(), org, "chatbot").await.unwrap();
    let (id, new) = s
        .create_key(&actor(), project, &KeySpec::named("prod"))
        .await
        .unwrap();
    let owner = s
        .authenticate(&new.key)
        .await
        .unwrap()
        .expect("the new key works");
    assert_eq!(
        (owner.key_id, owner.project_id, owner.org_id),
        (id, project, org)
    );
    let secret = new.key.split('_').nth(3).unwrap();
    let dumped = dump(&s).await;
    assert!(dumped.contains(&new.public_id), "the public id is stored");
    assert!(!dumped.contains(secret) && !dumped.contains(&new.key));
    // The checksum refuses a typo before any query; an unknown key is no one's.
    let mut typo = new.key.clone();
    let last = typo.pop().unwrap();
    typo.push(if last == 'a' { 'b' } else { 'a' });
    assert!(matches!(
        s.authenticate(&typo).await,
        Err(StoreError::Key(KeyError::Checksum))
    ));
    let stranger = sy_control::key::generate("test", &pepper()).unwrap();
    assert_eq!(s.authenticate(&stranger.key).await.unwrap(), None);
    // Same public id, another secret (as if guessed): refused.
    let forged = sy_control::key::with_public_id("test", &new.public_id, &pepper()).unwrap();
    assert_eq!(s.authenticate(&forged.key).await.unwrap(), None);
}

#[tokio::test]
async fn a_rotated_key_keeps_its_id_and_the_old_secret_lives_only_through_its_grace() {
    let s = store().await;
    let org = s.create_org(&actor(), "Acme").await.unwrap();
    let project = s.create_project(&actor(), org, "p").await.unwrap();
    let (id, old) = s
        .create_key(&actor(), project, &KeySpec::named("k"))
        .await
        .unwrap();
    let new = s.rotate_key(&actor(), id, 3600).await.unwrap();
    assert_eq!(new.public_id, old.public_id);
    for k in [&old.key, &new.key] {
        assert_eq!(s.authenticate(k).await.unwrap().unwrap().key_id, id);
    }
    // The grace period ends.
    sqlx::query("UPDATE api_keys SET previous_valid_until = now() - interval '1 second'")
        .execute(s.pool())
        .await
        .unwrap();
    assert_eq!(s.authenticate(&old.key).await.unwrap(), None);
    assert_eq!(s.authenticate(&new.key).await.unwrap().unwrap().key_id, id);
    // A rotation without grace refuses the old secret at once.
    let newer = s.rotate_key(&actor(), id, 0).await.unwrap();
    assert_eq!(s.authenticate(&new.key).await.unwrap(), None);
    assert!(s.authenticate(&newer.key).await.unwrap().is_some());
}

#[tokio::test]
async fn revoked_and_expired_keys_and_missing_owners_are_refused() {
    let s = store().await;
    let org = s.create_org(&actor(), "Acme").await.unwrap();
    let project = s.create_project(&actor(), org, "p").await.unwrap();
    let (revoked, r) = s
        .create_key(&actor(), project, &KeySpec::named("r"))
        .await
        .unwrap();
    let (expired, e) = s
        .create_key(&actor(), project, &KeySpec::named("e"))
        .await
        .unwrap();
    s.revoke_key(&actor(), revoked).await.unwrap();
    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(expired)
        .execute(s.pool())
        .await
        .unwrap();
    assert_eq!(s.authenticate(&r.key).await.unwrap(), None);
    assert_eq!(s.authenticate(&e.key).await.unwrap(), None);
    assert!(matches!(
        s.rotate_key(&actor(), revoked, 60).await,
        Err(StoreError::NotFound("key"))
    ));
    let nobody = uuid::Uuid::now_v7();
    assert!(matches!(
        s.create_project(&actor(), nobody, "p").await,
        Err(StoreError::NotFound("org"))
    ));
    assert!(matches!(
        s.create_key(&actor(), nobody, &KeySpec::named("k")).await,
        Err(StoreError::NotFound("project"))
    ));
    // A disabled org takes its keys with it.
    let (live, l) = s
        .create_key(&actor(), project, &KeySpec::named("l"))
        .await
        .unwrap();
    assert_eq!(s.authenticate(&l.key).await.unwrap().unwrap().key_id, live);
    sqlx::query("UPDATE orgs SET status = 'disabled'")
        .execute(s.pool())
        .await
        .unwrap();
    assert_eq!(s.authenticate(&l.key).await.unwrap(), None);
}

#[tokio::test]
async fn migrating_again_changes_nothing() {
    let s = store().await;
    let org = s.create_org(&actor(), "kept").await.unwrap();
    s.migrate().await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM orgs WHERE id = $1")
        .bind(org)
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn hostile_names_are_stored_verbatim() {
    let s = store().await;
    for name in [
        "'; DROP TABLE orgs; --",
        "Ünïcödé ✓ 名前",
        "control\u{1}chars\ttab",
        &"x".repeat(10_000),
    ] {
        let id = s.create_org(&actor(), name).await.unwrap();
        let (back,): (String,) = sqlx::query_as("SELECT name FROM orgs WHERE id = $1")
            .bind(id)
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(back, name);
    }
}

#[tokio::test]
async fn every_write_leaves_one_chained_audit_row_and_an_edit_is_named() {
    let s = store().await;
    let org = s.create_org(&actor(), "Acme").await.unwrap();
    let project = s.create_project(&actor(), org, "p").await.unwrap();
    let (key, _) = s
        .create_key(&actor(), project, &KeySpec::named("k"))
        .await
        .unwrap();
    s.rotate_key(&actor(), key, 60).await.unwrap();
    s.revoke_key(&actor(), key).await.unwrap();
    // A refused write leaves no row.
    assert!(
        s.create_project(&actor(), uuid::Uuid::now_v7(), "x")
            .await
            .is_err()
    );
    let rows: Vec<(i64, String, String, String)> =
        sqlx::query_as("SELECT seq, action, target_id, actor FROM audit_log ORDER BY seq")
            .fetch_all(s.pool())
            .await
            .unwrap();
    let actions: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(
        actions,
        [
            "org.create",
            "project.create",
            "key.create",
            "key.rotate",
            "key.revoke"
        ]
    );
    assert!(rows.iter().all(|r| r.3 == "test-owner"));
    assert_eq!(rows[4].2, key.to_string());
    assert_eq!(audit::verify(s.pool()).await.unwrap(), Ok(5));
    // Someone edits row 3 in the database: verify names it.
    sqlx::query(
        "UPDATE audit_log SET after = jsonb_set(after, '{name}', '\"other\"') WHERE seq = 3",
    )
    .execute(s.pool())
    .await
    .unwrap();
    assert_eq!(
        audit::verify(s.pool()).await.unwrap(),
        Err(Broken::Row { seq: 3 })
    );
    // Or deletes it.
    sqlx::query("DELETE FROM audit_log WHERE seq = 3")
        .execute(s.pool())
        .await
        .unwrap();
    assert_eq!(
        audit::verify(s.pool()).await.unwrap(),
        Err(Broken::Gap { seq: 4 })
    );
}

#[tokio::test]
async fn concurrent_writers_keep_one_chain() {
    let s = store().await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.create_org(&actor(), &format!("org {i}")).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(audit::verify(s.pool()).await.unwrap(), Ok(16));
}

#[tokio::test]
async fn the_in_memory_table_loads_exactly_the_live_keys() {
    let s = store().await;
    let org = s.create_org(&actor(), "Acme").await.unwrap();
    let project = s.create_project(&actor(), org, "p").await.unwrap();
    let (live, l) = s
        .create_key(&actor(), project, &KeySpec::named("live"))
        .await
        .unwrap();
    let (revoked, r) = s
        .create_key(&actor(), project, &KeySpec::named("revoked"))
        .await
        .unwrap();
    let (rotated, old) = s
        .create_key(&actor(), project, &KeySpec::named("rotated"))
        .await
        .unwrap();
    let new = s.rotate_key(&actor(), rotated, 3600).await.unwrap();
    s.revoke_key(&actor(), revoked).await.unwrap();
    let table = KeyTable::load(&s).await.unwrap();
    assert_eq!(table.len(), 2);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let p = pepper();
    assert_eq!(
        table.authenticate(&p, &l.key, now).unwrap().owner.key_id,
        live
    );
    assert_eq!(table.authenticate(&p, &r.key, now), Err(Refused::Unknown));
    for k in [&old.key, &new.key] {
        let owner = table.authenticate(&p, k, now).unwrap();
        assert_eq!((owner.owner.key_id, owner.owner.org_id), (rotated, org));
    }
    // The old secret's grace ends an hour from now, as the store said.
    assert_eq!(
        table.authenticate(&p, &old.key, now + 3_601_000),
        Err(Refused::Unknown)
    );
    assert!(table.authenticate(&p, &new.key, now + 3_601_000).is_ok());
}

#[tokio::test]
async fn a_keys_scopes_networks_and_expiry_reach_the_table() {
    let s = store().await;
    let org = s.create_org(&actor(), "Acme").await.unwrap();
    let project = s.create_project(&actor(), org, "p").await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let spec = KeySpec {
        models: Some(vec!["gpt-4o-mini".into(), "auto".into()]),
        expires_at_ms: Some(now + 60_000),
        allowed_cidrs: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        metadata: serde_json::json!({"team": "search"}),
        ..KeySpec::named("scoped")
    };
    let (id, k) = s.create_key(&actor(), project, &spec).await.unwrap();
    let table = KeyTable::load(&s).await.unwrap();
    let grant = table.authenticate(&pepper(), &k.key, now).unwrap();
    assert_eq!(grant.owner.key_id, id);
    assert!(grant.allows_model("auto") && !grant.allows_model("gpt-4o"));
    assert!(grant.allows_addr("10.9.9.9".parse().unwrap()));
    assert!(grant.allows_addr("::1".parse().unwrap()));
    assert!(!grant.allows_addr("127.0.0.1".parse().unwrap()));
    // Expiry to the millisecond PostgreSQL keeps (it stores microseconds).
    assert!(table.authenticate(&pepper(), &k.key, now + 59_999).is_ok());
    assert_eq!(
        table.authenticate(&pepper(), &k.key, now + 60_000),
        Err(Refused::Expired)
    );
    assert_eq!(table.grant_of(id).as_deref(), Some(&**grant));
    // The audit row says what the key may do, never its secret.
    let (after,): (String,) =
        sqlx::query_as("SELECT after::text FROM audit_log WHERE action = 'key.create'")
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert!(
        after.contains("gpt-4o-mini") && after.contains("10.0.0.0/8"),
        "{after}"
    );
    assert!(!after.contains(&k.key[k.key.len() - 20..]), "{after}");
}

#[tokio::test]
async fn the_key_table_carries_the_limits_of_the_key_its_project_and_its_org() {
    use serde_json::json;
    use sy_control::views::LimitTarget;
    let s = store().await;
    let org = s.create_org(&actor(), "Acme").await.unwrap();
    let project = s.create_project(&actor(), org, "p").await.unwrap();
    let (id, k) = s
        .create_key(&actor(), project, &KeySpec::named("k"))
        .await
        .unwrap();
    s.set_limits(
        &actor(),
        LimitTarget::Org(org),
        &sy_control::views::LimitChange {
            limits: Some(json!({"rpm": 600})),
            model_limits: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    s.set_limits(
        &actor(),
        LimitTarget::Key(id),
        &sy_control::views::LimitChange {
            limits: Some(json!({"concurrency": 2})),
            model_limits: Some(json!({"gpt-4o": {"tpm": 1000}})),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let table = KeyTable::load(&s).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let grant = table.authenticate(&pepper(), &k.key, now).unwrap();
    assert_eq!(grant.limits.org.all.rpm, Some(600));
    assert_eq!(grant.limits.key.all.concurrency, Some(2));
    assert_eq!(grant.limits.key.models["gpt-4o"].tpm, Some(1000));
    assert_eq!(grant.limits.project, Default::default());
    assert_eq!(grant.scopes("gpt-4o", &Default::default()).len(), 3);
    assert_eq!(grant.scopes("other", &Default::default()).len(), 2);
}
