//! The control plane end to end: `switchyard migrate` applies the PostgreSQL
//! migrations once, `switchyard admin audit verify` checks the chain, and an
//! ingress authenticates tenants' keys from memory, holds them to their
//! scope, networks and expiry, and feels a revocation on every replica.

use std::process::Command;

use crate::stack::{KEY, Stack, StackOptions, body};

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
    let actor = sy_control::audit::Actor::local("ops", "owner");
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

/// The control plane's store on a schema of its own, migrated, and the
/// config sections that point a stack at it.
pub(crate) async fn tenants_store(prefix: &str) -> (sy_control::store::Store, String) {
    let (_, _, scoped) = fresh_schema(prefix).await;
    let pepper = "a test pepper of at least thirty-two bytes";
    let store = sy_control::store::Store::connect(
        scoped.parse().unwrap(),
        sy_control::key::Pepper::new(pepper.as_bytes()).unwrap(),
        "test",
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let sections = format!(
        "\n[postgres]\nurl = \"{scoped}\"\n\n[tenants]\nkey_pepper = \"{pepper}\"\nkey_env = \"test\"\n"
    );
    (store, sections)
}

/// A new org with one project and one key of that project: (org, project, key).
async fn org_with_key(
    store: &sy_control::store::Store,
    name: &str,
) -> (uuid::Uuid, uuid::Uuid, sy_control::key::NewKey) {
    let actor = owner();
    let org = store.create_org(&actor, name).await.unwrap();
    let project = store.create_project(&actor, org, "p").await.unwrap();
    let spec = sy_control::store::KeySpec::named("k");
    let (_, key) = store.create_key(&actor, project, &spec).await.unwrap();
    (org, project, key)
}

/// The status of a chat completion for `model` with `key`.
async fn chat_status(stack: &Stack, key: &str, model: &str) -> u16 {
    stack
        .http
        .post(stack.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body(model, "hi"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Whether `key` is served within 2 s (a change announced to the ingress,
/// or to the workers, on its way).
async fn served_soon(stack: &Stack, key: &str) -> bool {
    for _ in 0..200 {
        if chat_status(stack, key, "gpt-4o-mini").await == 200 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

/// Whether `key` is refused (401) within a second.
async fn refused_within_a_second(stack: &Stack, key: &str) -> bool {
    let started = std::time::Instant::now();
    while chat_status(stack, key, "gpt-4o-mini").await != 401 {
        if started.elapsed() > std::time::Duration::from_secs(1) {
            return false;
        }
    }
    true
}

/// `org`'s stored balance, checked against the sum of its ledger rows (the
/// ledger invariant: they must agree).
pub(crate) async fn ledger_balance(store: &sy_control::store::Store, org: uuid::Uuid) -> i64 {
    let stored = store.balance(org).await.unwrap().balance_nanos;
    let sum = store.ledger_sum(org).await.unwrap();
    assert_eq!(stored, sum, "the stored balance is the sum of the ledger");
    stored
}

pub(crate) fn owner() -> sy_control::audit::Actor {
    sy_control::audit::Actor::local("e2e", "owner")
}

fn now_ms() -> i64 {
    sy_protocol::now_unix_ms() as i64
}

/// The error body's OpenAI `type` and `code`, or Anthropic's `type`.
pub(crate) async fn refusal(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap();
    let e = &v["error"];
    (
        status,
        e["type"].as_str().unwrap_or_default().to_owned(),
        format!(
            "{} {}",
            e["code"].as_str().unwrap_or_default(),
            e["message"].as_str().unwrap_or_default()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_keys_authenticate_from_memory_and_are_held_to_scope_network_and_expiry() {
    use sy_control::store::KeySpec;
    let (store, sections) = tenants_store("e").await;
    let sections = format!(
        "{sections}\n[[admin_tokens]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nrole = \"viewer\"\n"
    );
    let actor = owner();
    let org = store.create_org(&actor, "Acme").await.unwrap();
    let project = store.create_project(&actor, org, "web").await.unwrap();
    let (plain_id, plain) = store
        .create_key(&actor, project, &KeySpec::named("plain"))
        .await
        .unwrap();
    let scoped = KeySpec {
        models: Some(vec!["claude-sonnet-4-5".into()]),
        ..KeySpec::named("scoped")
    };
    let (_, scoped) = store.create_key(&actor, project, &scoped).await.unwrap();
    let elsewhere = KeySpec {
        allowed_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        ..KeySpec::named("elsewhere")
    };
    let (_, elsewhere) = store.create_key(&actor, project, &elsewhere).await.unwrap();
    let here = KeySpec {
        allowed_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
        ..KeySpec::named("here")
    };
    let (_, here) = store.create_key(&actor, project, &here).await.unwrap();
    let expired = KeySpec {
        expires_at_ms: Some(now_ms() - 1_000),
        ..KeySpec::named("expired")
    };
    let (_, expired) = store.create_key(&actor, project, &expired).await.unwrap();
    let (revoked_id, revoked) = store
        .create_key(&actor, project, &KeySpec::named("revoked"))
        .await
        .unwrap();
    store.revoke_key(&actor, revoked_id).await.unwrap();

    let stack = Stack::start_with(StackOptions {
        clickhouse: true,
        sections,
        ..Default::default()
    })
    .await;
    let chat = |key: &str, model: &str| {
        stack
            .http
            .post(stack.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body(model, "hello"))
            .send()
    };
    let messages = |key: &str, model: &str| {
        stack
            .http
            .post(stack.url("/v1/messages"))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .json(&serde_json::json!({"model": model, "max_tokens": 16,
                "messages": [{"role": "user", "content": "hello"}]}))
            .send()
    };
    // A tenant's key works on both surfaces; the file's development key too.
    assert_eq!(chat(&plain.key, "gpt-4o-mini").await.unwrap().status(), 200);
    assert_eq!(
        messages(&plain.key, "claude-sonnet-4-5")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(chat(KEY, "gpt-4o-mini").await.unwrap().status(), 200);
    assert_eq!(chat(&here.key, "gpt-4o-mini").await.unwrap().status(), 200);
    assert_eq!(
        chat(&scoped.key, "claude-sonnet-4-5")
            .await
            .unwrap()
            .status(),
        200
    );
    let upstream = stack.upstream_requests();

    // Outside its scope: 403 naming the scope, in each surface's format.
    let (status, kind, text) = refusal(chat(&scoped.key, "gpt-4o-mini").await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (403, "permission_error"), "{text}");
    assert!(
        text.starts_with("permission_denied") && text.contains("[claude-sonnet-4-5]"),
        "{text}"
    );
    let (status, kind, _) = refusal(messages(&scoped.key, "gpt-4o-mini").await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (403, "permission_error"));
    // From outside its networks: 403.
    let (status, kind, text) = refusal(chat(&elsewhere.key, "gpt-4o-mini").await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (403, "permission_error"), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
    // Expired, revoked, mistyped, unknown: 401.
    let (status, kind, text) = refusal(chat(&expired.key, "gpt-4o-mini").await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (401, "authentication_error"));
    assert!(text.contains("expired"), "{text}");
    let (status, _, text) = refusal(chat(&revoked.key, "gpt-4o-mini").await.unwrap()).await;
    assert_eq!(status, 401, "{text}");
    let mut typo = plain.key.clone();
    typo.replace_range(25..26, if &typo[25..26] == "a" { "b" } else { "a" });
    let (status, _, text) = refusal(chat(&typo, "gpt-4o-mini").await.unwrap()).await;
    assert_eq!(status, 401);
    assert!(text.contains("checksum"), "{text}");
    let (status, kind, _) =
        refusal(messages(&revoked.key, "claude-sonnet-4-5").await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (401, "authentication_error"));
    assert_eq!(
        stack.upstream_requests(),
        upstream,
        "no refused request reached a provider"
    );

    // The usage row names the key, its project and its org.
    let ch = stack.clickhouse.as_ref().unwrap();
    let client = sy_accounting::client(ch);
    let sql = format!(
        "SELECT org_id, project_id FROM {}.requests FINAL WHERE key_id = '{plain_id}'",
        ch.database
    );
    let mut rows: Vec<(String, String)> = Vec::new();
    for _ in 0..150 {
        rows = client.query(&sql).fetch_all().await.unwrap();
        if rows.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| *r == (org.to_string(), project.to_string())),
        "{rows:?}"
    );
    // The key sees its own usage, not the development key's.
    let usage: serde_json::Value = stack
        .http
        .get(stack.url("/v1/usage"))
        .bearer_auth(&plain.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["key_id"], plain_id.to_string(), "{usage}");
    // The admin API sees any tenant's usage: the org's, grouped by key.
    let admin: serde_json::Value = stack
        .http
        .get(stack.url(&format!("/admin/v1/usage?org_id={org}&group_by=key")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let groups = admin["data"].as_array().unwrap();
    let plain_group = groups
        .iter()
        .find(|g| g["group"] == plain_id.to_string())
        .unwrap_or_else(|| panic!("{admin}"));
    assert_eq!(plain_group["attempts"], 2, "{admin}");
    assert!(
        !groups.iter().any(|g| g["group"] == "test"),
        "the development key is no org's: {admin}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_by_a_second_ingress_within_a_second() {
    use sy_control::store::KeySpec;
    let (store, sections) = tenants_store("r").await;
    let actor = owner();
    let org = store.create_org(&actor, "Acme").await.unwrap();
    let project = store.create_project(&actor, org, "p").await.unwrap();
    let mut stack = Stack::start_with(StackOptions {
        sections,
        ..Default::default()
    })
    .await;
    let other = stack.start_other_ingress().await;
    let subject = sy_protocol::Subjects::new(&stack.namespace).key_notices();
    let store = store.announcing(sy_control::feed::Notifier::new(
        sy_test_support::nats().await,
        subject,
    ));
    let models = |key: &str| {
        stack
            .http
            .get(format!("{other}/v1/models"))
            .bearer_auth(key)
            .send()
    };
    let mut delays = Vec::new();
    for i in 0..50 {
        let (id, k) = store
            .create_key(&actor, project, &KeySpec::named(&format!("k{i}")))
            .await
            .unwrap();
        // A new key reaches the other ingress too.
        let mut ok = false;
        for _ in 0..200 {
            if models(&k.key).await.unwrap().status() == 200 {
                ok = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(ok, "key {i} never reached the second ingress");
        let started = std::time::Instant::now();
        store.revoke_key(&actor, id).await.unwrap();
        loop {
            if models(&k.key).await.unwrap().status() == 401 {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "key {i} still works"
            );
        }
        delays.push(started.elapsed());
    }
    delays.sort();
    // Nearest rank: the 25th and the 50th of 50.
    let (p50, p99) = (delays[24], delays[49]);
    println!(
        "revocation felt on a second ingress over 50: p50 {p50:?}, p99 {p99:?}, max {:?}",
        delays[49]
    );
    assert!(p99 < std::time::Duration::from_secs(1), "p99 {p99:?}");
}

/// `switchyard admin … --json` as JSON.
pub(crate) fn admin_json(url: &str, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&admin_cli(url, &all)).unwrap()
}

pub(crate) const ADMIN: &str = "sk-sy-admin-e2e-token-1";

/// `switchyard admin --url URL --token ADMIN <args>`: stdout, or a panic with stderr.
pub(crate) fn admin_cli(url: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["admin", "--url", url, "--token", ADMIN])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A stack over a fresh control-plane schema (`prefix`) whose config holds
/// the owner admin token [`ADMIN`]; with ClickHouse when asked.
async fn owner_stack(prefix: &str, clickhouse: bool) -> Stack {
    let (_, sections) = tenants_store(prefix).await;
    let sections = format!(
        "{sections}\n[[admin_tokens]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nrole = \"owner\"\n"
    );
    Stack::start_with(StackOptions {
        sections,
        clickhouse,
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_on_the_ingress_and_its_cli_make_keys_that_work_at_once() {
    let stack = owner_stack("c", false).await;
    let base = stack.url("");
    let base = base.trim_end_matches('/');
    let json = |args: &[&str]| admin_json(base, args);
    let org = json(&["orgs", "create", "Acme"]);
    let org_id = org["id"].as_str().unwrap().to_owned();
    let project = json(&["projects", "create", "--org", &org_id, "web"]);
    let project_id = project["id"].as_str().unwrap().to_owned();
    let key = json(&[
        "keys",
        "create",
        "--project",
        &project_id,
        "--model",
        "gpt-4o-mini",
        "prod",
    ]);
    let secret = key["key"].as_str().unwrap().to_owned();
    let key_id = key["id"].as_str().unwrap().to_owned();
    // Usable at once (the ingress applied the announcement), within its scope.
    assert!(served_soon(&stack, &secret).await);
    assert_eq!(chat_status(&stack, &secret, "claude-sonnet-4-5").await, 403);
    // The table view names the key by its prefix, never its secret.
    let table = admin_cli(base, &["keys", "list", "--project", &project_id]);
    assert!(
        table.starts_with("ID") && table.contains(key["prefix"].as_str().unwrap()),
        "{table}"
    );
    assert!(!table.contains(&secret), "{table}");
    // An owner issues a token from the database; it works at once, with its role.
    let issued = json(&["tokens", "create", "--role", "viewer", "ci"]);
    let viewer = issued["token"].as_str().unwrap().to_owned();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["admin", "--url", base, "--token", &viewer, "orgs", "list"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&org_id));
    // An admin token (from the database or the config) is no API key, and
    // an API key no admin token.
    for token in [viewer.as_str(), ADMIN] {
        let resp = stack
            .http
            .post(stack.url("/v1/chat/completions"))
            .bearer_auth(token)
            .json(&body("gpt-4o-mini", "hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert!(resp.text().await.unwrap().contains("admin token"));
    }
    let resp = stack
        .http
        .get(stack.url("/admin/v1/whoami"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Revoked from the command line: refused at once.
    let revoked = json(&["keys", "revoke", &key_id]);
    assert_eq!(revoked["status"], "revoked");
    assert!(refused_within_a_second(&stack, &secret).await);
    let audit = admin_cli(base, &["audit", "list", "--target", &key_id]);
    assert!(
        audit.contains("key.revoke") && audit.contains("ops"),
        "{audit}"
    );
    // Disabling the org stops every key under it on the ingress at once.
    let other = json(&["keys", "create", "--project", &project_id, "second"]);
    let other = other["key"].as_str().unwrap().to_owned();
    assert!(served_soon(&stack, &other).await);
    json(&["orgs", "disable", &org_id]);
    assert!(refused_within_a_second(&stack, &other).await);
    // A wrong token: a clear error, exit status 1.
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "admin",
            "--url",
            base,
            "--token",
            "nope-nope-nope-nope",
            "orgs",
            "list",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_calls_with_its_own_credential_and_no_other_org_can_use_it() {
    let (store, sections) = tenants_store("k").await;
    let master = "ab".repeat(32);
    let sections = format!(
        "{sections}\n[credentials]\nmaster_key = \"{master}\"\n\n[[admin_tokens]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nrole = \"owner\"\n"
    );
    let mut keys = Vec::new();
    for name in ["A", "B"] {
        let (org, _, k) = org_with_key(&store, name).await;
        keys.push((org, k.key));
    }
    let byok = "sk-byok-org-a-0123456789";
    let mut stack = Stack::start_with(StackOptions {
        sections,
        openai_mock_key: Some(byok),
        log: "info",
        ..Default::default()
    })
    .await;
    let set = |org: Option<uuid::Uuid>| {
        let mut b = serde_json::json!({"provider": "openai", "api_key": byok});
        if let Some(o) = org {
            b["org_id"] = serde_json::json!(o);
        }
        let req = stack
            .http
            .post(stack.url("/admin/v1/credentials"))
            .bearer_auth(ADMIN)
            .json(&b);
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let v: serde_json::Value = resp.json().await.unwrap();
            assert!(!v.to_string().contains(byok));
            v
        }
    };
    // Nobody has the key the provider wants yet.
    assert_ne!(chat_status(&stack, &keys[0].1, "gpt-4o-mini").await, 200);
    // Org A brings its own: A's calls carry it, B's do not.
    let own = set(Some(keys[0].0)).await;
    assert!(
        served_soon(&stack, &keys[0].1).await,
        "org A with its own key"
    );
    assert_ne!(
        chat_status(&stack, &keys[1].1, "gpt-4o-mini").await,
        200,
        "org B must not use org A's key"
    );
    // A global credential serves every org without its own.
    set(None).await;
    assert!(
        served_soon(&stack, &keys[1].1).await,
        "org B with the global key"
    );
    // A's deleted: A falls back to the global one.
    let resp = stack
        .http
        .delete(stack.url(&format!(
            "/admin/v1/credentials/{}",
            own["id"].as_str().unwrap()
        )))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(served_soon(&stack, &keys[0].1).await);
    // No log line of the process holds the credential.
    let log = stack.stop_and_read_log();
    assert!(
        log.contains("Loaded the API key table"),
        "the log was captured: {log}"
    );
    assert!(!log.contains(byok), "{log}");
    assert!(!log.contains(&master), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_batches_belong_to_the_project_and_no_other_org_sees_them() {
    use sy_control::store::KeySpec;
    let (store, sections) = tenants_store("f").await;
    let (_, pa, a1) = org_with_key(&store, "A").await;
    let (_, a2) = store
        .create_key(&owner(), pa, &KeySpec::named("a2"))
        .await
        .unwrap();
    let (_, _, b1) = org_with_key(&store, "B").await;
    let stack = Stack::start_with(StackOptions {
        sections,
        ..Default::default()
    })
    .await;
    let line = r#"{"custom_id":"q1","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}}"#;
    let up = crate::batch::upload(&stack, &a1.key, format!("{line}\n").into_bytes()).await;
    assert_eq!(up.status(), 200);
    let file_id = up.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let made = crate::batch::create(&stack, &a1.key, &file_id).await;
    assert_eq!(made.status(), 200);
    let batch_id = made.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let get = |key: String, path: String| {
        let req = stack.http.get(stack.url(&path)).bearer_auth(key);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let paths = [
        format!("/v1/files/{file_id}"),
        format!("/v1/files/{file_id}/content"),
        format!("/v1/batches/{batch_id}"),
    ];
    // Another key of the same project shares them.
    for p in &paths {
        assert_eq!(get(a2.key.clone(), p.clone()).await.0, 200, "{p}");
    }
    let (_, list) = get(a2.key.clone(), "/v1/batches".into()).await;
    assert!(list.contains(&batch_id), "{list}");
    // Another org's key sees nothing of them, not even that they exist.
    for p in &paths {
        assert_eq!(get(b1.key.clone(), p.clone()).await.0, 404, "{p}");
    }
    let (_, files) = get(b1.key.clone(), "/v1/files".into()).await;
    assert!(!files.contains(&file_id), "{files}");
    let (_, list) = get(b1.key.clone(), "/v1/batches".into()).await;
    assert!(!list.contains(&batch_id), "{list}");
    let cancel = stack
        .http
        .post(stack.url(&format!("/v1/batches/{batch_id}/cancel")))
        .bearer_auth(&b1.key)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 404);
    // Nor can it start a batch from org A's file.
    let theirs = crate::batch::create(&stack, &b1.key, &file_id).await;
    assert_eq!(theirs.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_key_rotation_reseals_every_credential_while_requests_keep_flowing() {
    let (store, sections) = tenants_store("m").await;
    let actor = owner();
    let (org, _, key) = org_with_key(&store, "A").await;
    // Sealed under version 1 before the deployment moves to version 2.
    let (old, new) = ("11".repeat(32), "22".repeat(32));
    let v1 =
        sy_control::sealed::Keyring::new((1, sy_control::sealed::parse_key(&old).unwrap()), &[]);
    let secret = "sk-rotation-test-0123456789";
    for provider in ["openai", "anthropic", "gemini", "cohere"] {
        store
            .set_credential(&actor, &v1, None, provider, secret)
            .await
            .unwrap();
        store
            .set_credential(&actor, &v1, Some(org), provider, secret)
            .await
            .unwrap();
    }
    let sections = format!(
        "{sections}\n[credentials]\nmaster_key = \"{new}\"\nmaster_key_version = 2\n\
         [credentials.previous_master_keys]\n1 = \"{old}\"\n"
    );
    let stack = Stack::start_with(StackOptions {
        sections,
        openai_mock_key: Some(secret),
        ..Default::default()
    })
    .await;
    // Requests flow the whole time; every one is answered with the org's key.
    let started = std::time::Instant::now();
    let mut served = 0;
    loop {
        let resp = stack
            .http
            .post(stack.url("/v1/chat/completions"))
            .bearer_auth(&key.key)
            .json(&body("gpt-4o-mini", "hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        served += 1;
        let (left,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM provider_credentials WHERE key_version <> 2")
                .fetch_one(store.pool())
                .await
                .unwrap();
        if left == 0 && served >= 20 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{left} rows left"
        );
    }
    // Every row opens with version 2 alone now: version 1 can go.
    let v2 =
        sy_control::sealed::Keyring::new((2, sy_control::sealed::parse_key(&new).unwrap()), &[]);
    assert_eq!(store.open_credentials(&v2).await.unwrap().len(), 8);
}

/// What a provider sees of a client's end users and prompt-cache keys is per
/// tenant (issue 20): the same `user` and `prompt_cache_key` from two callers
/// reach the provider as two different pseudonyms, from one caller as the
/// same one, and never as the client sent them; Anthropic's
/// `metadata.user_id` likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_callers_never_share_a_provider_identity_or_prompt_cache_key() {
    use crate::stack::{KEY, OTHER_KEY, Stack};
    let stack = Stack::start().await;
    let send = |key: &'static str, model: &'static str, prompt: &'static str| {
        let stack = &stack;
        async move {
            let r = stack
                .http
                .post(stack.url("/v1/chat/completions"))
                .bearer_auth(key)
                .json(&serde_json::json!({
                    "model": model,
                    "messages": [{"role": "user", "content": prompt}],
                    "user": "alice@example.com",
                    "prompt_cache_key": "shared-cache-key",
                }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        }
    };
    send(KEY, "gpt-4o-mini", "ids one").await;
    send(OTHER_KEY, "gpt-4o-mini", "ids two").await;
    send(KEY, "gpt-4o-mini", "ids three").await;
    let one = stack.mock.identities_for("ids one");
    let two = stack.mock.identities_for("ids two");
    let three = stack.mock.identities_for("ids three");
    assert_eq!(one.len(), 2, "user and prompt_cache_key: {one:?}");
    assert_eq!(one, three, "one caller: the same identities every time");
    for (a, b) in one.iter().zip(&two) {
        assert_ne!(a, b, "two callers share an identity at the provider");
    }
    for id in one.iter().chain(&two) {
        assert!(id.starts_with("sy-") && id.len() == 35, "{id}");
    }
    // Anthropic: `user` becomes metadata.user_id, pseudonymous too.
    send(KEY, "claude-sonnet-4-5", "ids four").await;
    let anthropic = stack.dialect_mock("anthropic");
    let four = anthropic.identities_for("ids four");
    assert_eq!(four, [one[0].clone()], "{four:?}");
}

/// A key's default tags (set through the CLI and the admin API) reach the
/// usage rows of its requests under the tags a request names itself; bad
/// tags are refused by the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_default_tags_are_on_its_rows_under_the_requests_own() {
    let stack = owner_stack("g", true).await;
    let base = stack.url("");
    let base = base.trim_end_matches('/');
    let json = |args: &[&str]| admin_json(base, args);
    let org = json(&["orgs", "create", "Acme"]);
    let project = json(&[
        "projects",
        "create",
        "--org",
        org["id"].as_str().unwrap(),
        "web",
    ]);
    let key = json(&[
        "keys",
        "create",
        "--project",
        project["id"].as_str().unwrap(),
        "--tag",
        "team=search",
        "--tag",
        "tier=pro",
        "tagged",
    ]);
    assert_eq!(
        key["tags"],
        serde_json::json!({"team": "search", "tier": "pro"})
    );
    let secret = key["key"].as_str().unwrap().to_owned();
    let key_id = key["id"].as_str().unwrap().to_owned();
    assert!(served_soon(&stack, &secret).await);
    let resp = stack
        .http
        .post(stack.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .header("x-switchyard-tags", "tier=free")
        .json(&body("gpt-4o-mini", "tagged by its key"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ch = stack.clickhouse.as_ref().unwrap();
    let client = sy_accounting::client(ch);
    let sql = format!(
        "SELECT arrayStringConcat(tag_keys, ','), arrayStringConcat(tag_values, ',') \
         FROM {}.requests FINAL WHERE key_id = '{key_id}' AND request_id = ?",
        ch.database
    );
    let id = resp.headers()["x-switchyard-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut row = None;
    for _ in 0..150 {
        let rows: Vec<(String, String)> = client
            .query(&sql)
            .bind(id.as_str())
            .fetch_all()
            .await
            .unwrap();
        if let Some(r) = rows.into_iter().next() {
            row = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The request's own tier wins; the key's team fills in.
    assert_eq!(
        row,
        Some(("team,tier".to_owned(), "search,free".to_owned()))
    );
    // The admin API refuses tags that are not tags.
    let http = &stack.http;
    for bad in [
        serde_json::json!({"bad key": "x"}),
        serde_json::json!({"n": 7}),
        serde_json::json!(["x"]),
    ] {
        let r = http
            .patch(stack.url(&format!("/admin/v1/keys/{key_id}")))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({ "tags": bad }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r: serde_json::Value = http
        .patch(stack.url(&format!("/admin/v1/keys/{key_id}")))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"tags": {"team": "ads"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["tags"], serde_json::json!({"team": "ads"}));
}
