//! The admin API over HTTP against a real PostgreSQL: every endpoint with
//! every role against the table in docs/admin-api.md, the OpenAPI document
//! against the routes, the flows (create, list, change, rotate, revoke, the
//! audit log), isolation between orgs, hostile strings and malformed requests.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use reqwest::Method;
use serde_json::{Value, json};
use sy_control::admin::roles::{ROUTES, Role};
use sy_control::admin::{self, Admin, AdminToken};
use sy_control::store::Store;
use uuid::Uuid;

/// An ingress's routing as the admin API sees it, with one target `p/m`
/// (the ingress's own is tested end to end in tests/e2e/console.rs).
#[derive(Debug)]
struct OneTarget;

impl admin::ingress::Ingress for OneTarget {
    fn targets(&self) -> Value {
        json!({"targets": [{"provider": "p", "model": "m", "healthy": true, "forced": null}], "providers": []})
    }
    fn table(&self) -> Value {
        json!({"models": [{"name": "m", "targets": [{"provider": "p", "model": "m"}]}], "routers": []})
    }
    fn force<'a>(
        &'a self,
        provider: &'a str,
        model: &'a str,
        state: &'a str,
        by: &'a str,
    ) -> admin::ingress::BoxFuture<'a, Result<Value, admin::ingress::IngressError>> {
        Box::pin(async move {
            if (provider, model) != ("p", "m") {
                return Err(admin::ingress::IngressError::Invalid(
                    "no such target".into(),
                ));
            }
            Ok(json!({"provider": provider, "model": model, "state": state, "by": by}))
        })
    }
    fn batches(
        &self,
        _: usize,
    ) -> admin::ingress::BoxFuture<'_, Result<Value, admin::ingress::IngressError>> {
        Box::pin(async { Ok(json!({"object": "list", "data": [], "has_more": false})) })
    }
    fn explain<'a>(
        &'a self,
        _: Option<&'a str>,
        _: &'a axum::http::HeaderMap,
        _: axum::body::Bytes,
    ) -> admin::ingress::BoxFuture<'a, Result<Value, admin::ingress::IngressError>> {
        Box::pin(async { Ok(json!({"chosen": {"provider": "p", "model": "m"}})) })
    }
}

const OWNER: &str = "root-token-0000000001";

fn token_of(role: Role) -> String {
    format!("test-{}-token-0001", role.as_str())
}

/// The org-scoped owner token (of the org `Api::serve` is given).
fn scoped_token() -> &'static str {
    "test-org-owner-token-0001"
}

/// The master keys the test's admin API seals with.
fn keyring() -> sy_control::sealed::Keyring {
    sy_control::sealed::Keyring::new((1, [5u8; 32]), &[])
}

struct Api {
    base: String,
    http: reqwest::Client,
    store: Store,
}

impl Api {
    /// The admin API on a port of its own, with a token per role and an
    /// org-scoped admin token for `scoped_org` (if given).
    async fn start(scoped_org: Option<Uuid>) -> Api {
        let store = common::store().await;
        Api::serve(store, scoped_org).await
    }

    async fn serve(store: Store, scoped_org: Option<Uuid>) -> Api {
        let mut tokens: Vec<AdminToken> = Role::ALL
            .into_iter()
            .map(|r| AdminToken::new(r.as_str(), &token_of(r), r, None))
            .collect();
        tokens.push(AdminToken::new("root", OWNER, Role::Owner, None));
        if let Some(org) = scoped_org {
            tokens.push(AdminToken::new(
                "org-owner",
                scoped_token(),
                Role::Owner,
                Some(org),
            ));
        }
        let credentials = admin::Credentials {
            keys: keyring(),
            providers: ["openai".to_owned(), "anthropic".to_owned()].into(),
        };
        // Top-ups go to a Stripe-like mock (kept alive with the server).
        let stripe =
            sy_mock_provider::MockProvider::start(sy_mock_provider::MockOptions::new("stripe"))
                .await
                .unwrap();
        let topups = sy_control::payments::Topups {
            http: sy_test_support::http(),
            stripe: Some(sy_billing::stripe::Checkout {
                api_base: format!("http://{}", stripe.addr()),
                secret_key: "sk_test_admin".into(),
                success_url: "http://127.0.0.1/done".into(),
                cancel_url: "http://127.0.0.1/done".into(),
            }),
            yookassa: None,
            rates: Default::default(),
        };
        let api = Admin::new(
            store.clone(),
            tokens,
            Some(credentials),
            Some(common::clickhouse().await),
        )
        .with_topups(topups);
        api.lend(std::sync::Arc::new(OneTarget));
        let app = admin::router::<()>(api);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _stripe = stripe;
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        Api {
            base: format!("http://{addr}"),
            http: sy_test_support::http(),
            store,
        }
    }

    async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        // Every answer of an admin route names its request (a path that is
        // no route is answered before any of it runs).
        assert!(
            resp.headers().contains_key("x-switchyard-request-id") || path == "/admin/v1/secrets",
            "{path}"
        );
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(OWNER, method, path, body).await;
        assert!((200..300).contains(&status), "{path}: {status} {v}");
        v
    }
}

/// The "who may call what" table of docs/admin-api.md: (method path) →
/// allowed per role (owner, admin, operator, billing, viewer) and for an
/// org-scoped token.
fn docs_table() -> Vec<(String, [bool; 5], bool)> {
    let text =
        std::fs::read_to_string(sy_test_support::repo_root().join("docs/admin-api.md")).unwrap();
    text.lines()
        .filter(|l| l.starts_with("| `") && l.contains("/admin/v1"))
        .map(|l| {
            let cells: Vec<&str> = l
                .split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            assert_eq!(cells.len(), 7, "{l}");
            let endpoint = cells[0].trim_matches('`').to_owned();
            let yes = |c: &str| match c {
                "yes" | "own org" => true,
                "no" => false,
                other => panic!("{other} in {l}"),
            };
            let roles = [
                yes(cells[1]),
                yes(cells[2]),
                yes(cells[3]),
                yes(cells[4]),
                yes(cells[5]),
            ];
            (endpoint, roles, yes(cells[6]))
        })
        .collect()
}

fn openapi_operations() -> BTreeSet<String> {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(sy_test_support::repo_root().join("schemas/admin-openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["operationId"].is_string(), "{method} {path}");
            ops.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    ops
}

#[tokio::test]
async fn the_openapi_document_the_docs_table_and_the_routes_agree() {
    let routes: BTreeSet<String> = ROUTES
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        openapi_operations(),
        routes,
        "schemas/admin-openapi.json vs the routes"
    );
    let table: BTreeSet<String> = docs_table().into_iter().map(|(e, _, _)| e).collect();
    assert_eq!(table, routes, "docs/admin-api.md vs the routes");
    // Every listed route is served: without a token it is 401, never 404 or 405.
    let api = Api::start(None).await;
    for r in ROUTES {
        let path = r.path.replace("{id}", &Uuid::now_v7().to_string());
        let method = Method::from_bytes(r.method.as_bytes()).unwrap();
        let resp = api
            .http
            .request(method, format!("{}{path}", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{} {}", r.method, r.path);
    }
    // And a path the table does not list is not served.
    let (status, _) = api
        .call(OWNER, Method::GET, "/admin/v1/secrets", None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn every_endpoint_answers_every_role_as_the_docs_table_says() {
    let store = common::store().await;
    let actor = common::actor();
    let org = store.create_org(&actor, "A").await.unwrap();
    let api = Api::serve(store, Some(org)).await;
    let mut tokens: Vec<(String, String)> = Role::ALL
        .into_iter()
        .map(|r| (r.as_str().to_owned(), token_of(r)))
        .collect();
    tokens.push(("org-scoped".into(), scoped_token().to_owned()));
    let mut wrong = Vec::new();
    for (endpoint, roles, scoped) in docs_table() {
        let (method, path) = endpoint.split_once(' ').unwrap();
        for (i, (who, token)) in tokens.iter().enumerate() {
            // Fresh things of org A for each call, so that a permitted write
            // has something to act on.
            let project = api.store.create_project(&actor, org, "p").await.unwrap();
            let (key, _) = api
                .store
                .create_key(&actor, project, &sy_control::store::KeySpec::named("k"))
                .await
                .unwrap();
            let credential = api
                .store
                .set_credential(&actor, &keyring(), Some(org), "openai", "sk-org-a")
                .await
                .unwrap()
                .id;
            let admin_token = api
                .store
                .create_admin_token(&actor, "t", "viewer", Some(org))
                .await
                .unwrap()
                .0
                .id;
            let id = match path {
                p if p.starts_with("/admin/v1/admin-tokens/") => admin_token,
                p if p.starts_with("/admin/v1/orgs/") => org,
                p if p.starts_with("/admin/v1/projects/") => project,
                p if p.starts_with("/admin/v1/credentials/") => credential,
                _ => key,
            };
            let body = match (method, path) {
                ("POST", "/admin/v1/orgs") => Some(json!({"name": "x"})),
                ("POST", "/admin/v1/projects") => Some(json!({"org_id": org, "name": "x"})),
                ("POST", "/admin/v1/keys") => Some(json!({"project_id": project, "name": "x"})),
                ("POST", "/admin/v1/admin-tokens") => {
                    Some(json!({"name": "t", "role": "viewer", "org_id": org}))
                }
                ("POST", "/admin/v1/credentials") => {
                    Some(json!({"provider": "openai", "org_id": org, "api_key": "sk-x"}))
                }
                ("POST", p) if p.ends_with("/credits") => {
                    Some(json!({"usd": "1", "ref": Uuid::now_v7().to_string()}))
                }
                ("POST", p) if p.ends_with("/topups") => {
                    Some(json!({"provider": "stripe", "amount": 1000, "currency": "usd"}))
                }
                ("PUT", "/admin/v1/targets") => {
                    Some(json!({"provider": "p", "model": "m", "state": "off"}))
                }
                ("POST", "/admin/v1/route/explain") => Some(json!({"model": "m"})),
                ("POST", "/admin/v1/prices") => Some(json!({"set": {
                    "openai/gpt-x": {"input": "1", "output": "2"}}})),
                ("POST", "/admin/v1/plans") => Some(json!({
                    "name": format!("n{}", &Uuid::now_v7().simple().to_string()[..20]),
                    "multiplier": "1.2"})),
                ("PUT", p) if p.ends_with("/pricing") => {
                    Some(json!({"plan": null, "multiplier": "1.1"}))
                }
                ("PATCH", p) if p.starts_with("/admin/v1/plans/") => {
                    Some(json!({"multiplier": "1.3"}))
                }
                ("PUT", p) if p.starts_with("/admin/v1/pipelines/") => Some(json!({
                    "steps": [{"name": "a", "model": "m", "prompt": "Again: {{input}}"}]})),
                ("POST", _) => Some(json!({"grace_seconds": 0})),
                ("PATCH", p) if p.starts_with("/admin/v1/credentials/") => {
                    Some(json!({"api_key": "sk-new"}))
                }
                ("PATCH", _) => Some(json!({"name": "renamed"})),
                _ => None,
            };
            // A fresh plan for the plan routes (a permitted DELETE takes it).
            let plan = format!("p{}", Uuid::now_v7().simple());
            api.store
                .create_plan(
                    &actor,
                    &sy_control::pricing::Plan {
                        name: plan[..30].to_owned(),
                        multiplier_ppb: 1_100_000_000,
                        model_multipliers: Default::default(),
                        cache_hit_multiplier_ppb: None,
                    },
                )
                .await
                .unwrap();
            // And a fresh pipeline for the pipeline routes.
            let pipeline = format!("pl{}", Uuid::now_v7().simple());
            api.store
                .put_pipeline(
                    &actor,
                    &pipeline,
                    &json!({"steps": [{"name": "a", "model": "m", "prompt": "{{input}}"}]}),
                )
                .await
                .unwrap();
            let name = if path.starts_with("/admin/v1/pipelines/") {
                pipeline.as_str()
            } else {
                &plan[..30]
            };
            let url = path
                .replace("{id}", &id.to_string())
                .replace("{name}", name)
                .replace("{version}", "current")
                .replace("{period}", "2020-01");
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let (status, v) = api.call(token, method, &url, body).await;
            let allowed = if i < 5 { roles[i] } else { scoped };
            let refused = status == 403;
            if refused == allowed || status == 401 || (allowed && !(200..300).contains(&status)) {
                wrong.push(format!("{endpoint} as {who}: {status} {v}"));
            }
            // Re-enable what a permitted DELETE disabled, for the next caller.
            if url.starts_with("/admin/v1/orgs/") {
                api.ok(
                    Method::PATCH,
                    &format!("/admin/v1/orgs/{org}"),
                    Some(json!({"status": "active"})),
                )
                .await;
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test]
async fn keys_are_created_shown_once_listed_changed_rotated_and_revoked_with_audit_rows() {
    let api = Api::start(None).await;
    let org = api
        .ok(
            Method::POST,
            "/admin/v1/orgs",
            Some(json!({"name": "Acme"})),
        )
        .await;
    let org_id = org["id"].as_str().unwrap().to_owned();
    assert_eq!(org["status"], "active");
    let project = api
        .ok(
            Method::POST,
            "/admin/v1/projects",
            Some(json!({"org_id": org_id, "name": "web"})),
        )
        .await;
    let project_id = project["id"].as_str().unwrap().to_owned();
    let created = api
        .ok(
            Method::POST,
            "/admin/v1/keys",
            Some(json!({"project_id": project_id, "name": "prod",
                "scopes": {"models": ["gpt-4o-mini"]}, "allowed_cidrs": ["10.0.0.0/8", "192.0.2.7"],
                "expires_at": 4_000_000_000i64, "metadata": {"team": "search"}})),
        )
        .await;
    let key_id = created["id"].as_str().unwrap().to_owned();
    let secret = created["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with(created["prefix"].as_str().unwrap()));
    assert_eq!(created["org_id"], org_id.as_str());
    assert_eq!(created["scopes"], json!({"models": ["gpt-4o-mini"]}));
    assert_eq!(
        created["allowed_cidrs"],
        json!(["10.0.0.0/8", "192.0.2.7/32"])
    );
    assert_eq!(created["expires_at"], 4_000_000_000i64);
    // Shown once: no other answer holds the secret.
    let got = api
        .ok(Method::GET, &format!("/admin/v1/keys/{key_id}"), None)
        .await;
    assert!(got.get("key").is_none());
    let listed = api
        .ok(
            Method::GET,
            &format!("/admin/v1/keys?project_id={project_id}"),
            None,
        )
        .await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(&secret[secret.len() - 20..]));
    // A change: scope lifted, expiry removed, renamed.
    let changed = api
        .ok(
            Method::PATCH,
            &format!("/admin/v1/keys/{key_id}"),
            Some(json!({"name": "prod-2", "scopes": null, "expires_at": null})),
        )
        .await;
    assert_eq!(
        (changed["name"].as_str(), &changed["scopes"]),
        (Some("prod-2"), &json!({}))
    );
    assert!(changed["expires_at"].is_null());
    assert_eq!(
        changed["allowed_cidrs"], created["allowed_cidrs"],
        "fields left out stay"
    );
    // Rotation: same id and prefix, a new secret, the old one in grace.
    let rotated = api
        .ok(
            Method::POST,
            &format!("/admin/v1/keys/{key_id}/rotate"),
            Some(json!({"grace_seconds": 60})),
        )
        .await;
    assert_eq!(
        (rotated["id"].as_str(), rotated["prefix"].as_str()),
        (Some(key_id.as_str()), created["prefix"].as_str())
    );
    assert_ne!(rotated["key"], created["key"]);
    assert!(rotated["previous_valid_until"].as_i64().is_some());
    let owner_of = |k: &str| {
        let k = k.to_owned();
        let s = api.store.clone();
        async move {
            s.authenticate(&k)
                .await
                .unwrap()
                .map(|o| o.key_id.to_string())
        }
    };
    assert_eq!(owner_of(&secret).await, Some(key_id.clone()));
    assert_eq!(
        owner_of(rotated["key"].as_str().unwrap()).await,
        Some(key_id.clone())
    );
    let revoked = api
        .ok(Method::DELETE, &format!("/admin/v1/keys/{key_id}"), None)
        .await;
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(owner_of(rotated["key"].as_str().unwrap()).await, None);
    // Pagination in creation order.
    for i in 0..3 {
        api.ok(
            Method::POST,
            "/admin/v1/orgs",
            Some(json!({"name": format!("org {i}")})),
        )
        .await;
    }
    let first = api.ok(Method::GET, "/admin/v1/orgs?limit=2", None).await;
    assert_eq!(
        (
            first["data"].as_array().unwrap().len(),
            first["has_more"].as_bool()
        ),
        (2, Some(true))
    );
    assert_eq!(first["data"][0]["id"], org_id.as_str());
    let after = first["last_id"].as_str().unwrap();
    let second = api
        .ok(
            Method::GET,
            &format!("/admin/v1/orgs?limit=2&after={after}"),
            None,
        )
        .await;
    assert_eq!(
        (
            second["data"].as_array().unwrap().len(),
            second["has_more"].as_bool()
        ),
        (2, Some(false))
    );
    // The audit log: every write, newest first, with who, the request and the address.
    let audit = api
        .ok(
            Method::GET,
            &format!("/admin/v1/audit?target_id={key_id}"),
            None,
        )
        .await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["key.revoke", "key.rotate", "key.update", "key.create"]
    );
    for row in audit["data"].as_array().unwrap() {
        assert_eq!(
            (row["actor"].as_str(), row["role"].as_str()),
            (Some("root"), Some("owner"))
        );
        assert_eq!(row["client_ip"], "127.0.0.1");
        assert!(Uuid::parse_str(row["request_id"].as_str().unwrap()).is_ok());
    }
    let all = api.ok(Method::GET, "/admin/v1/audit?limit=500", None).await;
    assert!(
        !all.to_string().contains(&secret[secret.len() - 20..]),
        "no secret in the audit log"
    );
    // org, project, key (create, update, rotate, revoke), three more orgs.
    assert_eq!(
        sy_control::audit::verify(api.store.pool()).await.unwrap(),
        Ok(9)
    );
    // Disabling the org stops its keys; the audit log says who.
    let k2 = api
        .ok(
            Method::POST,
            "/admin/v1/keys",
            Some(json!({"project_id": project_id, "name": "k2"})),
        )
        .await;
    api.ok(Method::DELETE, &format!("/admin/v1/orgs/{org_id}"), None)
        .await;
    assert_eq!(owner_of(k2["key"].as_str().unwrap()).await, None);
}

#[tokio::test]
async fn an_org_scoped_token_sees_and_changes_only_its_own_org() {
    let store = common::store().await;
    let actor = common::actor();
    let a = store.create_org(&actor, "A").await.unwrap();
    let b = store.create_org(&actor, "B").await.unwrap();
    let pb = store.create_project(&actor, b, "b").await.unwrap();
    let (kb, _) = store
        .create_key(&actor, pb, &sy_control::store::KeySpec::named("b"))
        .await
        .unwrap();
    let api = Api::serve(store, Some(a)).await;
    let t = scoped_token();
    let (status, who) = api.call(t, Method::GET, "/admin/v1/whoami", None).await;
    assert_eq!(
        (status, who["org_id"].as_str()),
        (200, Some(a.to_string().as_str()))
    );
    let (_, orgs) = api.call(t, Method::GET, "/admin/v1/orgs", None).await;
    assert_eq!(orgs["data"].as_array().unwrap().len(), 1);
    assert_eq!(orgs["data"][0]["id"], a.to_string());
    for path in [
        format!("/admin/v1/orgs/{b}"),
        format!("/admin/v1/projects/{pb}"),
        format!("/admin/v1/keys/{kb}"),
    ] {
        let (status, _) = api.call(t, Method::GET, &path, None).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _) = api
        .call(t, Method::DELETE, &format!("/admin/v1/keys/{kb}"), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = api
        .call(
            t,
            Method::GET,
            &format!("/admin/v1/projects?org_id={b}"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = api
        .call(
            t,
            Method::POST,
            "/admin/v1/projects",
            Some(json!({"org_id": b, "name": "x"})),
        )
        .await;
    assert_eq!(status, 404);
    let (_, keys) = api.call(t, Method::GET, "/admin/v1/keys", None).await;
    assert_eq!(keys["data"].as_array().unwrap().len(), 0, "{keys}");
    // In its own org it works.
    let (status, p) = api
        .call(
            t,
            Method::POST,
            "/admin/v1/projects",
            Some(json!({"org_id": a, "name": "mine"})),
        )
        .await;
    assert_eq!(status, 201, "{p}");
    let (status, k) = api
        .call(
            t,
            Method::POST,
            "/admin/v1/keys",
            Some(json!({"project_id": p["id"], "name": "k"})),
        )
        .await;
    assert_eq!(status, 201, "{k}");
    assert_eq!(
        api.store.key(kb).await.unwrap().status,
        "active",
        "org B's key untouched"
    );
}

#[tokio::test]
async fn hostile_strings_are_kept_verbatim_and_malformed_requests_get_clear_400s() {
    let api = Api::start(None).await;
    let long = "長".repeat(1024);
    let hostile = [
        "'; DROP TABLE orgs; --",
        "Robert'); DELETE FROM api_keys WHERE ('1'='1",
        "<script>alert(1)</script>",
        "\u{1}\u{1b}[31mred\u{7f}\t\r\n",
        "\u{202e}gnp.exe \u{1f600} Ω ﷽",
        "%s%n%x {{}} ${HOME} $(reboot)",
        long.as_str(),
    ];
    for name in hostile {
        let org = api
            .ok(Method::POST, "/admin/v1/orgs", Some(json!({"name": name})))
            .await;
        assert_eq!(org["name"], name);
        let id = org["id"].as_str().unwrap();
        let again = api
            .ok(Method::GET, &format!("/admin/v1/orgs/{id}"), None)
            .await;
        assert_eq!(again["name"], name);
        let p = api
            .ok(
                Method::POST,
                "/admin/v1/projects",
                Some(json!({"org_id": id, "name": name})),
            )
            .await;
        let k = api
            .ok(
                Method::POST,
                "/admin/v1/keys",
                Some(json!({"project_id": p["id"], "name": name,
                "scopes": {"models": [name]}, "metadata": {name: name}})),
            )
            .await;
        assert_eq!(
            (&k["name"], &k["scopes"]["models"][0], &k["metadata"][name]),
            (&json!(name), &json!(name), &json!(name))
        );
        let audit = api
            .ok(
                Method::GET,
                &format!("/admin/v1/audit?target_id={id}&actor=root"),
                None,
            )
            .await;
        assert_eq!(audit["data"][0]["after"]["name"], name);
    }
    // The tables are all still there.
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM orgs")
        .fetch_one(api.store.pool())
        .await
        .unwrap();
    assert_eq!(n, hostile.len() as i64);
    let org = api
        .ok(Method::POST, "/admin/v1/orgs", Some(json!({"name": "o"})))
        .await;
    let p = api
        .ok(
            Method::POST,
            "/admin/v1/projects",
            Some(json!({"org_id": org["id"], "name": "p"})),
        )
        .await;
    let k = api
        .ok(
            Method::POST,
            "/admin/v1/keys",
            Some(json!({"project_id": p["id"], "name": "k"})),
        )
        .await;
    let key_path = format!("/admin/v1/keys/{}", k["id"].as_str().unwrap());
    let rotate_path = format!("{key_path}/rotate");
    let org_path = format!("/admin/v1/orgs/{}", org["id"].as_str().unwrap());
    let bad: Vec<(Method, &str, Value, &str)> = vec![
        (Method::POST, "/admin/v1/orgs", json!({}), "name"),
        (
            Method::POST,
            "/admin/v1/orgs",
            json!({"name": ""}),
            "'name' must not be empty",
        ),
        (
            Method::POST,
            "/admin/v1/orgs",
            json!({"name": "a\u{0}b"}),
            "NUL",
        ),
        (
            Method::POST,
            "/admin/v1/orgs",
            json!({"name": "x".repeat(1025)}),
            "longer than 1024",
        ),
        (
            Method::POST,
            "/admin/v1/orgs",
            json!({"name": "x", "plan": "gold"}),
            "unknown field `plan`",
        ),
        (
            Method::POST,
            "/admin/v1/orgs",
            json!(["name"]),
            "Invalid body",
        ),
        (
            Method::POST,
            "/admin/v1/projects",
            json!({"org_id": "not-a-uuid", "name": "x"}),
            "org_id",
        ),
        (
            Method::POST,
            "/admin/v1/keys",
            json!({"project_id": p["id"], "name": "x", "allowed_cidrs": ["10.0.0.0/33"]}),
            "10.0.0.0/33",
        ),
        (
            Method::POST,
            "/admin/v1/keys",
            json!({"project_id": p["id"], "name": "x", "expires_at": -5}),
            "expires_at",
        ),
        (
            Method::POST,
            "/admin/v1/keys",
            json!({"project_id": p["id"], "name": "x", "metadata": [1]}),
            "metadata",
        ),
        (
            Method::POST,
            "/admin/v1/keys",
            json!({"project_id": p["id"], "name": "x", "scopes": {"model": []}}),
            "unknown field `model`",
        ),
        (
            Method::PATCH,
            &key_path,
            json!({"status": "revoked"}),
            "unknown field `status`",
        ),
        (
            Method::POST,
            &rotate_path,
            json!({"grace_seconds": 2_592_001}),
            "grace_seconds",
        ),
        (
            Method::POST,
            &rotate_path,
            json!({"grace_seconds": -1}),
            "Invalid body",
        ),
        (
            Method::PATCH,
            &org_path,
            json!({"status": "paused"}),
            "status",
        ),
    ];
    for (method, path, body, says) in bad {
        let (status, v) = api
            .call(OWNER, method.clone(), path, Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{method} {path} {body}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    // Not JSON at all.
    let resp = api
        .http
        .post(format!("{}/admin/v1/orgs", api.base))
        .bearer_auth(OWNER)
        .body("{name: 'x'")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    for q in ["limit=0", "limit=101", "limit=x", "after=nope", "org_id=1"] {
        let (status, v) = api
            .call(OWNER, Method::GET, &format!("/admin/v1/projects?{q}"), None)
            .await;
        assert_eq!(status, 400, "{q}: {v}");
    }
    let (status, _) = api
        .call(OWNER, Method::GET, "/admin/v1/keys/not-a-uuid", None)
        .await;
    assert_eq!(status, 404);
    let (status, v) = api
        .call(OWNER, Method::GET, "/admin/v1/audit?actor=a%00b", None)
        .await;
    assert_eq!(status, 400, "{v}");
    // A key is not an admin token, and a wrong token is refused.
    let (status, v) = api
        .call(
            k["key"].as_str().unwrap(),
            Method::GET,
            "/admin/v1/whoami",
            None,
        )
        .await;
    assert_eq!(
        (status, v["error"]["type"].as_str()),
        (401, Some("authentication_error"))
    );
    assert_eq!(
        sy_control::audit::verify(api.store.pool())
            .await
            .unwrap()
            .map(|n| n > 0),
        Ok(true)
    );
}

#[tokio::test]
async fn credentials_are_set_sealed_listed_by_org_and_never_returned() {
    let store = common::store().await;
    let actor = common::actor();
    let a = store.create_org(&actor, "A").await.unwrap();
    let b = store.create_org(&actor, "B").await.unwrap();
    let api = Api::serve(store, Some(a)).await;
    let secret = "sk-global-secret-0123456789";
    let (status, global) = api
        .call(
            OWNER,
            Method::POST,
            "/admin/v1/credentials",
            Some(json!({"provider": "openai", "api_key": secret})),
        )
        .await;
    assert_eq!(status, 200, "{global}");
    assert!(global["org_id"].is_null() && global["key_version"] == 1);
    assert_eq!(global["fingerprint"].as_str().unwrap().len(), 12);
    // An org's token sets its own org's key (bring your own key); it cannot
    // set another org's, nor see the global one.
    let t = scoped_token();
    let (status, own) = api
        .call(
            t,
            Method::POST,
            "/admin/v1/credentials",
            Some(json!({"provider": "openai", "api_key": "sk-org-a-secret"})),
        )
        .await;
    assert_eq!(
        (status, own["org_id"].as_str()),
        (200, Some(a.to_string().as_str()))
    );
    let (status, _) = api
        .call(
            t,
            Method::POST,
            "/admin/v1/credentials",
            Some(json!({"provider": "openai", "org_id": b, "api_key": "x"})),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = api
        .call(
            t,
            Method::GET,
            &format!("/admin/v1/credentials/{}", global["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (_, mine) = api
        .call(t, Method::GET, "/admin/v1/credentials", None)
        .await;
    assert_eq!(mine["data"].as_array().unwrap().len(), 1);
    // PATCH replaces the secret of one credential.
    let (status, patched) = api
        .call(
            t,
            Method::PATCH,
            &format!("/admin/v1/credentials/{}", own["id"].as_str().unwrap()),
            Some(json!({"api_key": "sk-org-a-secret-2"})),
        )
        .await;
    assert_eq!((status, &patched["id"]), (200, &own["id"]));
    assert_ne!(patched["fingerprint"], own["fingerprint"]);
    // Setting again replaces (one row per org and provider), with a new fingerprint.
    let again = api
        .ok(
            Method::POST,
            "/admin/v1/credentials",
            Some(json!({"provider": "openai", "api_key": "sk-global-rotated"})),
        )
        .await;
    assert_eq!(again["id"], global["id"]);
    assert_ne!(again["fingerprint"], global["fingerprint"]);
    let all = api.ok(Method::GET, "/admin/v1/credentials", None).await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    // Bad input: an unknown provider, an empty or control-laden key.
    for body in [
        json!({"provider": "nope", "api_key": "x"}),
        json!({"provider": "openai", "api_key": "  "}),
        json!({"provider": "openai", "api_key": "a\nb"}),
    ] {
        let (status, v) = api
            .call(
                OWNER,
                Method::POST,
                "/admin/v1/credentials",
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 400, "{body}: {v}");
    }
    // Nothing any answer, row or audit entry holds is the secret.
    let audit = api.ok(Method::GET, "/admin/v1/audit?limit=500", None).await;
    let (rows,): (String,) =
        sqlx::query_as("SELECT string_agg(row_to_json(c)::text, ' ') FROM provider_credentials c")
            .fetch_one(api.store.pool())
            .await
            .unwrap();
    for text in [audit.to_string(), rows, all.to_string()] {
        for s in [secret, "sk-org-a-secret", "sk-global-rotated"] {
            assert!(!text.contains(s), "{s} in {text}");
        }
    }
    // They open with the master key, each bound to its org and provider.
    let opened = api.store.open_credentials(&keyring()).await.unwrap();
    let mut pairs: Vec<(Option<Uuid>, &str)> = opened
        .iter()
        .map(|o| (o.org_id, o.secret.as_str()))
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        vec![(None, "sk-global-rotated"), (Some(a), "sk-org-a-secret-2")]
    );
    let (status, _) = api
        .call(
            OWNER,
            Method::DELETE,
            &format!("/admin/v1/credentials/{}", own["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        api.store.open_credentials(&keyring()).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn a_master_key_rotation_reseals_every_credential_while_both_versions_open() {
    let store = common::store().await;
    let actor = common::actor();
    let org = store.create_org(&actor, "A").await.unwrap();
    let v1 = sy_control::sealed::Keyring::new((1, [1u8; 32]), &[]);
    for provider in ["openai", "anthropic", "gemini"] {
        store
            .set_credential(&actor, &v1, None, provider, &format!("sk-{provider}"))
            .await
            .unwrap();
        store
            .set_credential(
                &actor,
                &v1,
                Some(org),
                provider,
                &format!("sk-org-{provider}"),
            )
            .await
            .unwrap();
    }
    let v2 = sy_control::sealed::Keyring::new((2, [2u8; 32]), &[(1, [1u8; 32])]);
    // Half-way: some rows under each version; both open with the new keyring.
    assert_eq!(store.reseal_credentials(&v2, 2).await.unwrap(), 2);
    assert_eq!(store.open_credentials(&v2).await.unwrap().len(), 6);
    assert!(
        store.open_credentials(&v1).await.is_err(),
        "the old keyring cannot open v2 rows"
    );
    assert_eq!(store.reseal_credentials(&v2, 100).await.unwrap(), 4);
    assert_eq!(store.reseal_credentials(&v2, 100).await.unwrap(), 0);
    let versions: Vec<(i32,)> =
        sqlx::query_as("SELECT DISTINCT key_version FROM provider_credentials")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(versions, vec![(2,)]);
    // Done: the old key can go.
    let only_v2 = sy_control::sealed::Keyring::new((2, [2u8; 32]), &[]);
    let opened = store.open_credentials(&only_v2).await.unwrap();
    assert!(
        opened
            .iter()
            .any(|o| o.org_id == Some(org) && o.secret == "sk-org-gemini")
    );
    // A ciphertext copied onto another org's row does not open there.
    sqlx::query(
        "UPDATE provider_credentials SET ciphertext = g.ciphertext, nonce = g.nonce \
         FROM provider_credentials g WHERE g.org_id IS NULL AND g.provider = 'openai' \
         AND provider_credentials.org_id IS NOT NULL AND provider_credentials.provider = 'openai'",
    )
    .execute(store.pool())
    .await
    .unwrap();
    assert!(matches!(
        store.open_credentials(&only_v2).await,
        Err(sy_control::store::StoreError::Sealed(_))
    ));
}

#[tokio::test]
async fn owners_issue_admin_tokens_that_work_until_revoked() {
    let store = common::store().await;
    let org = store.create_org(&common::actor(), "A").await.unwrap();
    let api = Api::serve(store, Some(org)).await;
    let issued = api
        .ok(
            Method::POST,
            "/admin/v1/admin-tokens",
            Some(json!({"name": "ci", "role": "operator"})),
        )
        .await;
    let token = issued["token"].as_str().unwrap().to_owned();
    assert!(
        token.starts_with(issued["prefix"].as_str().unwrap()) && token.starts_with("sy_admin_")
    );
    let (status, who) = api
        .call(&token, Method::GET, "/admin/v1/whoami", None)
        .await;
    assert_eq!(
        (status, who["role"].as_str(), who["name"].as_str()),
        (200, Some("operator"), Some("ci"))
    );
    // Its role holds: an operator may not create orgs.
    let (status, _) = api
        .call(
            &token,
            Method::POST,
            "/admin/v1/orgs",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, 403);
    // No listing and no table row holds the token.
    let listed = api.ok(Method::GET, "/admin/v1/admin-tokens", None).await;
    assert!(!listed.to_string().contains(&token[token.len() - 20..]));
    let (rows,): (String,) =
        sqlx::query_as("SELECT string_agg(row_to_json(t)::text, ' ') FROM admin_tokens t")
            .fetch_one(api.store.pool())
            .await
            .unwrap();
    assert!(!rows.contains(&token[token.len() - 20..]));
    // An org's owner issues its own org's tokens only; an admin issues none.
    let (status, _) = api
        .call(
            &token_of(Role::Admin),
            Method::POST,
            "/admin/v1/admin-tokens",
            Some(json!({"name": "x", "role": "viewer"})),
        )
        .await;
    assert_eq!(status, 403);
    // Revoked: refused on its next request; a mistyped one too.
    let id = issued["id"].as_str().unwrap();
    api.ok(
        Method::DELETE,
        &format!("/admin/v1/admin-tokens/{id}"),
        None,
    )
    .await;
    let (status, _) = api
        .call(&token, Method::GET, "/admin/v1/whoami", None)
        .await;
    assert_eq!(status, 401);
    let (status, v) = api
        .call("sy_admin_nope", Method::GET, "/admin/v1/whoami", None)
        .await;
    assert_eq!(status, 401, "{v}");
    let (status, v) = api
        .call(
            OWNER,
            Method::POST,
            "/admin/v1/admin-tokens",
            Some(json!({"name": "x", "role": "root"})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
}

#[tokio::test]
async fn rate_limits_are_set_on_orgs_projects_and_keys_checked_and_audited() {
    let api = Api::start(None).await;
    let org = api
        .ok(
            Method::POST,
            "/admin/v1/orgs",
            Some(json!({"name": "A", "limits": {"rpm": 600, "tpm": 100000},
            "model_limits": {"gpt-4o": {"rpm": 60}}})),
        )
        .await;
    assert_eq!(org["limits"], json!({"rpm": 600, "tpm": 100000}));
    assert_eq!(org["model_limits"], json!({"gpt-4o": {"rpm": 60}}));
    let project = api
        .ok(
            Method::POST,
            "/admin/v1/projects",
            Some(json!({"org_id": org["id"], "name": "p", "limits": {"concurrency": 20}})),
        )
        .await;
    assert_eq!(project["limits"], json!({"concurrency": 20}));
    let key = api
        .ok(
            Method::POST,
            "/admin/v1/keys",
            Some(json!({"project_id": project["id"], "name": "k"})),
        )
        .await;
    assert_eq!(
        (&key["limits"], &key["model_limits"]),
        (&json!({}), &json!({}))
    );
    let key_path = format!("/admin/v1/keys/{}", key["id"].as_str().unwrap());
    let changed = api
        .ok(
            Method::PATCH,
            &key_path,
            Some(json!({"limits": {"rpm": 10}})),
        )
        .await;
    assert_eq!(changed["limits"], json!({"rpm": 10}));
    assert_eq!(
        changed["name"], "k",
        "a change of limits alone leaves the rest"
    );
    // Out of range, unknown kinds, too many models: 400 naming the field.
    for (body, says) in [
        (json!({"limits": {"rpm": 0}}), "limits.rpm"),
        (json!({"limits": {"rps": 5}}), "unknown field `rps`"),
        (json!({"limits": {"tpm": -1}}), "Invalid body"),
        (
            json!({"model_limits": {"gpt-4o": {"concurrency": 2000000000}}}),
            "model_limits.gpt-4o.concurrency",
        ),
    ] {
        let (status, v) = api
            .call(OWNER, Method::PATCH, &key_path, Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{body}: {v}"
        );
    }
    let audit = api
        .ok(
            Method::GET,
            &format!("/admin/v1/audit?target_id={}", key["id"].as_str().unwrap()),
            None,
        )
        .await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["key.limits", "key.create"]);
    assert_eq!(audit["data"][0]["after"]["limits"], json!({"rpm": 10}));
    assert_eq!(audit["data"][0]["before"]["limits"], json!({}));
}
