//! The operator console (issue 22): its sessions, CSRF and headers over
//! HTTP, the traffic endpoints it draws from, and the whole console in
//! headless Chromium (tests/browser/console.py).

use std::process::Command;

use serde_json::{Value, json};

use crate::stack::{Stack, StackOptions};
use crate::tenants::{ADMIN, tenants_store};

const VIEWER: &str = "sk-sy-viewer-e2e-token-1";
const TRACES: &str = "http://traces.example/trace/{trace_id}";

/// A stack with tenants, ClickHouse, an owner token ([`ADMIN`]), a viewer
/// token ([`VIEWER`]) and traces (to a closed port: only their ids matter
/// here) with a viewer the console links to.
async fn console_stack(prefix: &str) -> Stack {
    let (_, sections) = tenants_store(prefix).await;
    let master = "cd".repeat(32);
    let sections = format!(
        "{sections}\n[[admin_tokens]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nrole = \"owner\"\n\n[[admin_tokens]]\nname = \"watcher\"\ntoken = \"{VIEWER}\"\nrole = \"viewer\"\n\n[credentials]\nmaster_key = \"{master}\"\n\n[tracing]\nenabled = true\nendpoint = \"http://127.0.0.1:9/v1/traces\"\nviewer_url = \"{TRACES}\"\n"
    );
    Stack::start_with(StackOptions {
        sections,
        clickhouse: true,
        ..Default::default()
    })
    .await
}

/// Signs in with `token`: the session cookie (`name=value`) and the CSRF token.
async fn sign_in(stack: &Stack, token: &str) -> (String, String) {
    let r = stack
        .http
        .post(stack.url("/console/api/session"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("; HttpOnly; SameSite=Strict"),
        "the cookie: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let v: Value = r.json().await.unwrap();
    (pair, v["csrf"].as_str().unwrap().to_owned())
}

async fn call(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = stack
        .http
        .request(method, stack.url(path))
        .header("cookie", cookie);
    if let Some(c) = csrf {
        req = req.header("x-csrf-token", c);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_need_csrf_for_writes_end_on_sign_out_and_pages_carry_a_strict_csp() {
    use reqwest::Method;
    let stack = console_stack("con").await;

    // The page: built in, with a strict policy and no inline code.
    let page = stack.http.get(stack.url("/console")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("script-src 'self'")
            && csp.contains("frame-ancestors 'none'")
            && !csp.contains("unsafe"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("/console/app.js") && !html.contains("<script>"));
    let js = stack
        .http
        .get(stack.url("/console/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );

    // Nothing without a session; sign-in refuses a wrong token, a form
    // post and another site's origin.
    let r = stack
        .http
        .get(stack.url("/admin/v1/orgs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let post = |body: String, content_type: &'static str, origin: Option<&'static str>| {
        let mut req = stack
            .http
            .post(stack.url("/console/api/session"))
            .header("content-type", content_type)
            .body(body);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let wrong = post(r#"{"token": "nope"}"#.into(), "application/json", None)
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let body = format!(r#"{{"token": "{ADMIN}"}}"#);
    let form = post(body.clone(), "application/x-www-form-urlencoded", None)
        .await
        .unwrap();
    assert_eq!(form.status(), 403);
    let elsewhere = post(body, "application/json", Some("https://evil.example"))
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 403);

    // The owner's session reads and, with its CSRF token only, writes.
    let (cookie, csrf) = sign_in(&stack, ADMIN).await;
    let (status, me) = call(
        &stack,
        Method::GET,
        "/console/api/session",
        &cookie,
        None,
        None,
    )
    .await;
    assert_eq!((status, me["role"].as_str()), (200, Some("owner")), "{me}");
    assert_eq!(me["can"]["tenants"], true);
    assert_eq!(me["trace_viewer"], TRACES);
    let (status, _) = call(&stack, Method::GET, "/admin/v1/orgs", &cookie, None, None).await;
    assert_eq!(status, 200);
    let org = Some(json!({"name": "Console Co"}));
    let (status, v) = call(
        &stack,
        Method::POST,
        "/admin/v1/orgs",
        &cookie,
        None,
        org.clone(),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("csrf_failed")),
        "{v}"
    );
    let (status, v) = call(
        &stack,
        Method::POST,
        "/admin/v1/orgs",
        &cookie,
        Some("forged"),
        org.clone(),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    let (status, created) = call(
        &stack,
        Method::POST,
        "/admin/v1/orgs",
        &cookie,
        Some(&csrf),
        org.clone(),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    // The audit log names the token behind the session.
    let (_, audit) = call(
        &stack,
        Method::GET,
        "/admin/v1/audit?action=org.create",
        &cookie,
        None,
        None,
    )
    .await;
    assert_eq!(audit["data"][0]["actor"], "ops", "{audit}");
    let (_, audit) = call(
        &stack,
        Method::GET,
        "/admin/v1/audit?action=console.sign_in",
        &cookie,
        None,
        None,
    )
    .await;
    assert_eq!(audit["data"][0]["actor"], "ops", "{audit}");
    assert_eq!(
        audit["data"][0]["target_kind"], "console_session",
        "{audit}"
    );

    // A viewer's session: the role holds whatever the page shows.
    let (viewer, viewer_csrf) = sign_in(&stack, VIEWER).await;
    let (_, me) = call(
        &stack,
        Method::GET,
        "/console/api/session",
        &viewer,
        None,
        None,
    )
    .await;
    assert_eq!(
        (me["can"]["tenants"].as_bool(), me["can"]["keys"].as_bool()),
        (Some(false), Some(false))
    );
    let (status, v) = call(
        &stack,
        Method::POST,
        "/admin/v1/orgs",
        &viewer,
        Some(&viewer_csrf),
        org.clone(),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("permission_denied")),
        "{v}"
    );

    // Signing out needs the CSRF token too, and ends the session everywhere.
    let (status, _) = call(
        &stack,
        Method::DELETE,
        "/console/api/session",
        &cookie,
        None,
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &stack,
        Method::DELETE,
        "/console/api/session",
        &cookie,
        Some(&csrf),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(&stack, Method::GET, "/admin/v1/orgs", &cookie, None, None).await;
    assert_eq!(status, 401);
    let (_, audit) = call(
        &stack,
        Method::GET,
        "/admin/v1/audit?action=console.sign_out",
        &viewer,
        None,
        None,
    )
    .await;
    assert_eq!(audit["data"][0]["actor"], "ops", "{audit}");

    // A database token's session ends when the token is revoked.
    let r = stack
        .http
        .post(stack.url("/admin/v1/admin-tokens"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "temp", "role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let issued: Value = r.json().await.unwrap();
    let (temp, _) = sign_in(&stack, issued["token"].as_str().unwrap()).await;
    let (status, _) = call(&stack, Method::GET, "/admin/v1/orgs", &temp, None, None).await;
    assert_eq!(status, 200);
    let r = stack
        .http
        .delete(stack.url(&format!(
            "/admin/v1/admin-tokens/{}",
            issued["id"].as_str().unwrap()
        )))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (status, _) = call(&stack, Method::GET, "/admin/v1/orgs", &temp, None, None).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_and_request_search_read_traffic_from_clickhouse() {
    let stack = console_stack("trf").await;
    let get = |path: String| {
        let http = stack.http.clone();
        let url = stack.url(&path);
        async move {
            let r = http.get(url).bearer_auth(ADMIN).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    // Two requests: one served, one falling back from openai to anthropic.
    for prompt in ["hello", "hello [[mock:status=500,only=openai]]"] {
        let resp = stack
            .chat(&crate::stack::body("chain", prompt))
            .header("x-switchyard-tags", "team=console")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let rows: Vec<String> = stack
        .rows_until(
            "SELECT status FROM {db}.requests FINAL",
            |r: &[String]| r.iter().filter(|s| *s == "ok").count() >= 2,
        )
        .await;
    assert!(rows.len() >= 3, "{rows:?}");

    let (status, v) = get("/admin/v1/overview?window=15m".into()).await;
    assert_eq!(status, 200, "{v}");
    let series = v["series"].as_array().unwrap();
    let requests: u64 = series.iter().map(|p| p["requests"].as_u64().unwrap()).sum();
    let failed: u64 = series.iter().map(|p| p["failed"].as_u64().unwrap()).sum();
    assert_eq!(requests, 2, "{v}");
    assert!(failed >= 1, "{v}");
    assert!(series[0]["latency_p99_ms"].as_f64().unwrap() >= 0.0);
    let providers: Vec<&str> = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["provider"].as_str().unwrap())
        .collect();
    assert!(
        providers.contains(&"openai") && providers.contains(&"anthropic"),
        "{v}"
    );

    // Found by tag; one request's attempts, the fallback's reason on the second.
    let (status, v) = get("/admin/v1/requests?tag=team=console".into()).await;
    assert_eq!(status, 200, "{v}");
    let data = v["data"].as_array().unwrap();
    assert!(data.len() >= 3, "{v}");
    let fell_back = data
        .iter()
        .find(|r| r["provider"] == "anthropic")
        .unwrap_or_else(|| panic!("{v}"));
    let id = fell_back["request_id"].as_str().unwrap();
    let (status, one) = get(format!("/admin/v1/requests?request_id={id}")).await;
    assert_eq!(status, 200, "{one}");
    let attempts = one["data"].as_array().unwrap();
    assert!(attempts.len() >= 2, "{one}");
    assert!(attempts.iter().all(|a| a["request_id"] == id));
    let last = &attempts[0];
    assert_eq!(
        (last["provider"].as_str(), last["status"].as_str()),
        (Some("anthropic"), Some("ok")),
        "{one}"
    );
    assert_ne!(last["fallback_reason"], "", "{one}");
    let (status, _) = get(format!(
        "/admin/v1/requests?request_id={}",
        uuid::Uuid::nil()
    ))
    .await;
    assert_eq!(status, 404);
    let (status, _) = get("/admin/v1/requests?status=ok&model=chain&limit=1".into()).await;
    assert_eq!(status, 200);
    // A tag the rows do not carry matches none of them, even with an empty value.
    let (status, none) = get("/admin/v1/requests?tag=absent=".into()).await;
    assert_eq!(
        (status, none["data"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{none}"
    );

    // Bad parameters are 400s naming what is wrong.
    for bad in [
        "/admin/v1/overview?window=2h",
        "/admin/v1/overview?colour=red",
        "/admin/v1/requests?tag=novalue",
        "/admin/v1/requests?limit=0",
        "/admin/v1/requests?request_id=x",
    ] {
        let (status, v) = get(bad.into()).await;
        assert_eq!(status, 400, "{bad}: {v}");
    }
}

/// The whole console in headless Chromium: sign in, create an org, a
/// project and a key, copy its secret, use it, find the request, revoke
/// it; a viewer sees no buttons and the API refuses it anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    let stack = console_stack("web").await;
    // A batch for the batches page (the config's key, two items).
    let lines = [
        crate::batch::line("a", "gpt-4o-mini", "one"),
        crate::batch::line("b", "gpt-4o-mini", "two"),
    ];
    let file: Value =
        crate::batch::upload(&stack, crate::stack::KEY, lines.join("\n").into_bytes())
            .await
            .json()
            .await
            .unwrap();
    let r = crate::batch::create(&stack, crate::stack::KEY, file["id"].as_str().unwrap()).await;
    assert_eq!(r.status(), 200);
    let batch: Value = r.json().await.unwrap();
    let batch_id = batch["id"].as_str().unwrap().to_owned();
    let listed: Value = stack
        .http
        .get(stack.url("/admin/v1/batches"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"][0]["id"], batch_id.as_str(), "{listed}");
    assert_eq!(listed["data"][0]["request_counts"]["total"], 2, "{listed}");
    let python = std::env::var("SY_TEST_PYTHON").unwrap_or_else(|_| {
        sy_test_support::repo_root()
            .join(".venv/bin/python")
            .display()
            .to_string()
    });
    let script = sy_test_support::repo_root().join("tests/browser/console.py");
    let shots = std::env::var("SY_CONSOLE_SCREENSHOTS").unwrap_or_else(|_| {
        sy_test_support::repo_root()
            .join(".local/console-screenshots")
            .display()
            .to_string()
    });
    let base = stack.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&script)
            .args(["--base-url", &base, "--owner-token", ADMIN, "--viewer-token", VIEWER])
            .args(["--batch-id", &batch_id])
            .args(["--screenshots", &shots])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {python} (SY_TEST_PYTHON): {e}. Run scripts/test.sh, which installs Chromium and Selenium.")
            })
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Target state and overrides are the deployment's: a tenant's key is
/// refused on `/v1/route/targets`; the admin API reads and forces targets
/// by role, audited, and shows the routing table and explain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_and_routing_are_the_deployments_through_the_admin_api() {
    let stack = console_stack("rte").await;
    let admin = |method: reqwest::Method, path: &str, token: &str, body: Option<Value>| {
        let mut req = stack
            .http
            .request(method, stack.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    use reqwest::Method;
    let (_, org) = admin(
        Method::POST,
        "/admin/v1/orgs",
        ADMIN,
        Some(json!({"name": "T"})),
    )
    .await;
    let (_, project) = admin(
        Method::POST,
        "/admin/v1/projects",
        ADMIN,
        Some(json!({"org_id": org["id"], "name": "p"})),
    )
    .await;
    let (_, key) = admin(
        Method::POST,
        "/admin/v1/keys",
        ADMIN,
        Some(json!({"project_id": project["id"], "name": "k"})),
    )
    .await;
    let tenant = key["key"].as_str().unwrap().to_owned();
    // The key works (once every ingress learned it), but not on targets.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = stack
            .http
            .get(stack.url("/v1/route/targets"))
            .bearer_auth(&tenant)
            .send()
            .await
            .unwrap();
        if r.status() == 403 || std::time::Instant::now() > until {
            assert_eq!(r.status(), 403);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "permission_denied", "{v}");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = stack
        .http
        .put(stack.url("/v1/route/targets"))
        .bearer_auth(&tenant)
        .json(&json!({"provider": "openai", "model": "gpt-4o-mini", "state": "off"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = stack
        .http
        .get(stack.url("/v1/route/targets"))
        .bearer_auth(crate::stack::KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the deployment's own key");

    // Forced through the admin API: by role, audited, seen by explain.
    let off = json!({"provider": "openai", "model": "gpt-4o-mini", "state": "off"});
    let (status, _) = admin(Method::PUT, "/admin/v1/targets", VIEWER, Some(off.clone())).await;
    assert_eq!(status, 403);
    let (status, done) = admin(Method::PUT, "/admin/v1/targets", ADMIN, Some(off)).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("off")),
        "{done}"
    );
    assert_eq!(done["by"], "ops");
    let (_, live) = admin(Method::GET, "/admin/v1/targets", VIEWER, None).await;
    let row = live["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["provider"] == "openai" && r["model"] == "gpt-4o-mini")
        .unwrap_or_else(|| panic!("{live}"));
    assert_eq!(
        (row["forced"].as_bool(), row["healthy"].as_bool()),
        (Some(false), Some(false))
    );
    let (status, explained) = admin(
        Method::POST,
        "/admin/v1/route/explain",
        VIEWER,
        Some(json!({"model": "chain", "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(status, 200, "{explained}");
    assert_eq!(explained["chosen"]["provider"], "anthropic", "{explained}");
    let (status, _) = admin(
        Method::PUT,
        "/admin/v1/targets",
        ADMIN,
        Some(json!({"provider": "openai", "model": "gpt-4o-mini", "state": "auto"})),
    )
    .await;
    assert_eq!(status, 200);
    let (_, audit) = admin(
        Method::GET,
        "/admin/v1/audit?action=target.force",
        ADMIN,
        None,
    )
    .await;
    let rows = audit["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{audit}");
    assert_eq!(rows[0]["target_id"], "openai/gpt-4o-mini");
    assert_eq!(rows[0]["before"]["forced"], false, "{audit}");
    for bad in [
        json!({"provider": "openai", "model": "gpt-4o-mini", "state": "sideways"}),
        json!({"provider": "openai", "model": "no-such-model", "state": "off"}),
        json!({"provider": "openai", "model": "gpt-4o-mini"}),
    ] {
        let (status, v) = admin(Method::PUT, "/admin/v1/targets", ADMIN, Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad}: {v}");
    }

    // The routing table, and explain of another API's body.
    let (status, table) = admin(Method::GET, "/admin/v1/routing", VIEWER, None).await;
    assert_eq!(status, 200);
    let media = table["routers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "auto:media")
        .unwrap_or_else(|| panic!("{table}"));
    assert_eq!(media["routes"][0]["kinds"], json!(["images"]));
    assert!(
        table["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "chain")
    );
    let (status, explained) = admin(
        Method::POST,
        "/admin/v1/route/explain?api=images",
        VIEWER,
        Some(json!({"model": "auto:media", "prompt": "a kite", "size": "16x16"})),
    )
    .await;
    assert_eq!(
        (status, explained["route"].as_str()),
        (200, Some("pictures")),
        "{explained}"
    );
    let (status, _) = admin(
        Method::POST,
        "/admin/v1/route/explain?api=videos",
        VIEWER,
        Some(json!({"model": "auto"})),
    )
    .await;
    assert_eq!(status, 400);
}
