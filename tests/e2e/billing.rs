//! Billing end to end (issue 18): Stripe's webhook on the real ingress over a
//! real PostgreSQL: a signed payment credits its order once however often it
//! is delivered; unsigned, mis-signed and stale deliveries are refused and
//! stored nowhere; a signed event that does not match its order credits
//! nothing and says why; money back before its payment is asked for again.

use serde_json::{Value, json};
use sy_billing::Provider;
use sy_control::payments::NewOrder;

use crate::stack::{Stack, StackOptions};
use crate::tenants::{owner, tenants_store};

const SECRET: &str = "whsec_e2e_secret_0123456789";

fn session_completed(event: &str, order: &str, amount: i64) -> Vec<u8> {
    json!({"id": event, "type": "checkout.session.completed", "data": {"object": {
        "id": "cs_1", "object": "checkout.session", "client_reference_id": order,
        "amount_total": amount, "currency": "usd", "payment_status": "paid",
        "payment_intent": format!("pi_{order}")}}})
    .to_string()
    .into_bytes()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn deliver(stack: &Stack, body: &[u8], signature: Option<String>) -> (u16, Value) {
    let mut req = stack
        .http
        .post(stack.url("/webhooks/stripe"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(s) = signature {
        req = req.header("stripe-signature", s);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_stripe_payment_credits_its_order_once_and_nothing_else_credits() {
    let (store, tenants) = tenants_store("bill").await;
    let org = store.create_org(&owner(), "Acme").await.unwrap();
    let order = |amount| NewOrder {
        org,
        provider: Provider::Stripe,
        amount,
        currency: "usd",
        credit_nanos: 10_000_000_000,
    };
    let ord = store.create_order(&owner(), order(1000)).await.unwrap().id;
    let later = store.create_order(&owner(), order(1000)).await.unwrap().id;
    let project = store.create_project(&owner(), org, "p").await.unwrap();
    let spec = sy_control::store::KeySpec::named("k");
    let (_, key) = store.create_key(&owner(), project, &spec).await.unwrap();
    let stack = Stack::start_with(StackOptions {
        sections: format!("{tenants}\n[billing.stripe]\nwebhook_secrets = [\"{SECRET}\"]\n"),
        ..Default::default()
    })
    .await;
    let balance = || async { store.balance(org).await.unwrap().balance_nanos };

    // Refused before anything is read: no signature, a wrong one, a stale one.
    let body = session_completed("evt_1", &ord, 1000);
    let forged = sy_billing::stripe::sign(&body, "whsec_someone_else_entirely", now());
    let stale = sy_billing::stripe::sign(&body, SECRET, now() - 3600);
    for (signature, why) in [
        (None, "missing or malformed"),
        (Some(forged), "no signature matches"),
        (Some(stale), "beyond the tolerance"),
    ] {
        let (status, v) = deliver(&stack, &body, signature).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["type"], "invalid_signature");
        assert!(v["error"]["message"].as_str().unwrap().contains(why), "{v}");
    }
    assert_eq!(balance().await, 0);

    // The genuine delivery credits once, however often it comes.
    for i in 0..10 {
        let signed = sy_billing::stripe::sign(&body, SECRET, now());
        let (status, v) = deliver(&stack, &body, Some(signed)).await;
        assert_eq!(status, 200, "{v}");
        let want = if i == 0 { "credited" } else { "replayed" };
        assert_eq!(v["outcome"], want, "{v}");
    }
    assert_eq!(balance().await, 10_000_000_000);

    // Signed, but not for what the order is: nothing, with the reason.
    let short = session_completed("evt_2", &later, 999);
    let signed = sy_billing::stripe::sign(&short, SECRET, now());
    let (status, v) = deliver(&stack, &short, Some(signed)).await;
    assert_eq!(
        (status, v["outcome"].as_str()),
        (200, Some("rejected")),
        "{v}"
    );
    assert!(v["reason"].as_str().unwrap().contains("is for 1000"), "{v}");
    assert_eq!(balance().await, 10_000_000_000);

    // Money back for a payment not seen yet: Stripe is asked to send it again.
    let refund = json!({"id": "evt_3", "type": "charge.refunded", "data": {"object": {
        "id": "ch_9", "payment_intent": "pi_unseen", "amount_refunded": 100, "currency": "usd"}}})
    .to_string()
    .into_bytes();
    let signed = sy_billing::stripe::sign(&refund, SECRET, now());
    let (status, v) = deliver(&stack, &refund, Some(signed)).await;
    assert_eq!(status, 503, "{v}");
    // A refund of the paid order debits what came back.
    let refund = json!({"id": "evt_4", "type": "charge.refunded", "data": {"object": {
        "id": "ch_1", "payment_intent": format!("pi_{ord}"), "amount_refunded": 250, "currency": "usd"}}})
    .to_string()
    .into_bytes();
    let signed = sy_billing::stripe::sign(&refund, SECRET, now());
    let (status, v) = deliver(&stack, &refund, Some(signed)).await;
    assert_eq!(
        (status, v["outcome"].as_str()),
        (200, Some("debited")),
        "{v}"
    );
    assert_eq!(balance().await, 7_500_000_000);

    // The org's keys see its balance; a key from the config file has no org.
    let read = |key: String| {
        let (http, url) = (stack.http.clone(), stack.url("/v1/billing/balance"));
        async move {
            let r = http.get(url).bearer_auth(key).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, v) = read(key.key.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["org_id"], org.to_string());
    assert_eq!(v["currency"], "usd");
    assert_eq!(v["balance_micros"], 7_500_000);
    let (status, v) = read(crate::stack::KEY.to_owned()).await;
    assert_eq!(status, 404, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("belongs to none"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orgs_keys_read_its_month_of_usage_and_billing() {
    let (store, tenants) = tenants_store("busage").await;
    let org = store.create_org(&owner(), "Acme").await.unwrap();
    let project = store.create_project(&owner(), org, "p").await.unwrap();
    let spec = sy_control::store::KeySpec::named("k");
    let (_, key) = store.create_key(&owner(), project, &spec).await.unwrap();
    let stack = Stack::start_with(StackOptions {
        sections: tenants,
        clickhouse: true,
        ..Default::default()
    })
    .await;
    for _ in 0..2 {
        let r = stack
            .http
            .post(stack.url("/v1/chat/completions"))
            .bearer_auth(&key.key)
            .json(&crate::stack::body("gpt-4o-mini", "hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let get = |key: String, query: &'static str| {
        let (http, url) = (
            stack.http.clone(),
            stack.url(&format!("/v1/billing/usage{query}")),
        );
        async move {
            let r = http.get(url).bearer_auth(key).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    // This month so far, by model, once the rows are in ClickHouse.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let v = loop {
        let (status, v) = get(key.key.clone(), "").await;
        assert_eq!(status, 200, "{v}");
        if v["data"][0]["requests"] == 2 {
            break v;
        }
        assert!(std::time::Instant::now() < until, "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(v["org_id"], org.to_string());
    assert_eq!(v["data"][0]["group"], "gpt-4o-mini");
    assert_ne!(v["data"][0]["billed"], "0", "{v}");
    let (status, v) = get(key.key.clone(), "?period=2020-01&group_by=project").await;
    assert_eq!(
        (status, v["data"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );
    assert_eq!(v["start"], 1_577_836_800);
    let (status, v) = get(key.key.clone(), "?period=2020-13").await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "period");
    let (status, _) = get(crate::stack::KEY.to_owned(), "").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_tops_up_through_stripe_or_yookassa_and_each_paid_order_credits_once() {
    let (store, tenants) = tenants_store("topup").await;
    let org = store.create_org(&owner(), "Acme").await.unwrap();
    let project = store.create_project(&owner(), org, "p").await.unwrap();
    let spec = sy_control::store::KeySpec::named("k");
    let (_, key) = store.create_key(&owner(), project, &spec).await.unwrap();
    // Stripe's and YooKassa's APIs are the mock (it answers both).
    let stripe =
        sy_mock_provider::MockProvider::start(sy_mock_provider::MockOptions::new("stripe"))
            .await
            .unwrap();
    let stack = Stack::start_with(StackOptions {
        sections: format!(
            "{tenants}\n[billing.stripe]\nwebhook_secrets = [\"{SECRET}\"]\n\
             api_base = \"http://{addr}\"\nsecret_key = \"sk_test_e2e\"\n\
             [billing.yookassa]\nshop_id = \"100500\"\nsecret_key = \"test_e2e\"\n\
             api_base = \"http://{addr}\"\nnotification_ips = [\"127.0.0.1/32\"]\n\
             [billing.exchange_rates]\nrub = \"0.0125\"\n",
            addr = stripe.addr()
        ),
        ..Default::default()
    })
    .await;
    let top_up = |key: String, body: String| {
        let (http, url) = (stack.http.clone(), stack.url("/v1/billing/topups"));
        async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let balance = || async { store.balance(org).await.unwrap().balance_nanos };

    // What cannot be an order is refused in the OpenAI error format; no order is made.
    for (body, status, says) in [
        (
            r#"{"provider":"paypal","amount":1500,"currency":"usd"}"#,
            400,
            "'provider'",
        ),
        (
            r#"{"provider":"stripe","amount":10,"currency":"usd"}"#,
            400,
            "'amount'",
        ),
        (
            r#"{"provider":"stripe","amount":-1500,"currency":"usd"}"#,
            400,
            "'amount'",
        ),
        (
            r#"{"provider":"stripe","amount":1500,"currency":"eur"}"#,
            400,
            "'currency'",
        ),
        (
            r#"{"provider":"stripe","amount":1500,"currency":"usd","org_id":"x"}"#,
            400,
            "org_id",
        ),
        (
            r#"{"provider":"stripe","amount":"1500","currency":"usd"}"#,
            400,
            "Invalid body",
        ),
        ("[1,2]", 400, "JSON object"),
        (
            r#"{"provider":"yookassa","amount":1500,"currency":"eur"}"#,
            400,
            "usd, rub",
        ),
    ] {
        let (got, v) = top_up(key.key.clone(), body.to_owned()).await;
        assert_eq!(got, status, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{body}: {v}"
        );
    }
    let (got, v) = top_up(
        crate::stack::KEY.to_owned(),
        r#"{"provider":"stripe","amount":1500,"currency":"usd"}"#.to_owned(),
    )
    .await;
    assert_eq!(got, 404, "a key from the config file has no org: {v}");

    // A $15.00 order and its Checkout page; nothing is credited before it is paid.
    let (got, order) = top_up(
        key.key.clone(),
        r#"{"provider":"stripe","amount":1500,"currency":"usd"}"#.to_owned(),
    )
    .await;
    assert_eq!(got, 201, "{order}");
    assert_eq!(order["org_id"], org.to_string());
    assert_eq!(order["status"], "pending");
    assert_eq!(
        (order["amount"].as_i64(), order["currency"].as_str()),
        (Some(1500), Some("usd"))
    );
    let id = order["order_id"].as_str().unwrap();
    let url = order["payment_url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("http://{}/", stripe.addr())),
        "{order}"
    );
    let stored = store.order(id).await.unwrap().unwrap();
    assert_eq!((stored.org_id, stored.amount), (org, 1500));
    assert!(
        stored
            .payment_ref
            .as_deref()
            .unwrap()
            .starts_with("cs_test_"),
        "{stored:?}"
    );
    assert_eq!(balance().await, 0);

    // Paying it: Stripe's signed checkout.session.completed credits $15 once,
    // however often the page is paid again.
    let pay = format!(
        "{url}?webhook={}&secret={SECRET}",
        stack.url("/webhooks/stripe")
    );
    for _ in 0..3 {
        let r = stack.http.post(&pay).send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["webhook_status"], 200, "{v}");
    }
    assert_eq!(balance().await, 15 * 1_000_000_000);
    let r = stack
        .http
        .get(stack.url("/v1/billing/balance"))
        .bearer_auth(&key.key)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["balance_micros"], 15_000_000, "{v}");
    assert_eq!(store.order(id).await.unwrap().unwrap().status, "paid");

    // 1,500 roubles through YooKassa at $0.0125: $18.75 more, once, although
    // YooKassa's notification comes three times.
    let (got, order) = top_up(
        key.key.clone(),
        r#"{"provider":"yookassa","amount":150000,"currency":"rub"}"#.to_owned(),
    )
    .await;
    assert_eq!(got, 201, "{order}");
    assert_eq!(
        (order["provider"].as_str(), order["currency"].as_str()),
        (Some("yookassa"), Some("rub"))
    );
    let url = order["payment_url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("http://{}/mock/yookassa/pay/", stripe.addr())),
        "{order}"
    );
    let pay = format!("{url}?webhook={}", stack.url("/webhooks/yookassa"));
    for _ in 0..3 {
        let v: Value = stack
            .http
            .post(&pay)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["webhook_status"], 200, "{v}");
    }
    assert_eq!(balance().await, 15 * 1_000_000_000 + 18_750_000_000);
}

/// One request's row: its price version, plan, multiplier (decimal),
/// tokens, cost and billed (nano-USD).
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct PricedRow {
    price_version: u32,
    plan: String,
    multiplier: String,
    input_tokens: u64,
    output_tokens: u64,
    cost: String,
    billed: String,
}

async fn priced_row(stack: &Stack, request_id: &str) -> PricedRow {
    let c = stack.clickhouse.as_ref().unwrap();
    let client = sy_accounting::client(c);
    let sql = format!(
        "SELECT price_version, plan, toString(assumeNotNull(multiplier)) AS multiplier, \
         input_tokens, output_tokens, toString(assumeNotNull(cost)) AS cost, \
         toString(assumeNotNull(billed)) AS billed FROM {}.requests FINAL \
         WHERE request_id = toUUID('{request_id}')",
        c.database
    );
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Ok(row) = client.query(&sql).fetch_one::<PricedRow>().await {
            return row;
        }
        assert!(std::time::Instant::now() < until, "no row for {request_id}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn nanos(decimal: &str) -> i64 {
    sy_config::price::parse_nanos(decimal).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_rows_keep_the_price_version_they_were_priced_under_and_the_orgs_multiplier() {
    use crate::tenants::{ADMIN, admin_cli};
    let (store, tenants) = tenants_store("price").await;
    let org = store.create_org(&owner(), "Acme").await.unwrap();
    let project = store.create_project(&owner(), org, "p").await.unwrap();
    let spec = sy_control::store::KeySpec::named("k");
    let (_, key) = store.create_key(&owner(), project, &spec).await.unwrap();
    let stack = Stack::start_with(StackOptions {
        sections: format!(
            "{tenants}\n[[admin_tokens]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nrole = \"owner\"\n"
        ),
        clickhouse: true,
        ..Default::default()
    })
    .await;
    let url = stack.base.clone();
    let cli = |args: &[&str]| admin_cli(&url, args);
    let org_id = org.to_string();
    // Version 1: $1 in, $2 out per million; plan "pro": ×1.5, ×2 for gpt-4o-mini.
    cli(&[
        "prices",
        "set",
        "openai/gpt-4o-mini",
        "--input",
        "1",
        "--output",
        "2",
    ]);
    cli(&[
        "plans",
        "create",
        "pro",
        "--multiplier",
        "1.5",
        "--model",
        "gpt-4o-mini=2",
    ]);
    cli(&["orgs", "set-pricing", &org_id, "--plan", "pro"]);
    let shown = cli(&["--json", "orgs", "pricing", &org_id]);
    assert!(
        shown.contains("\"plan\": \"pro\"") || shown.contains("\"plan\":\"pro\""),
        "{shown}"
    );

    let ask = |text: &'static str| {
        let (http, url, key) = (
            stack.http.clone(),
            stack.url("/v1/chat/completions"),
            key.key.clone(),
        );
        async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .json(&crate::stack::body("gpt-4o-mini", text))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.headers()["x-switchyard-request-id"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    // The key table reloads when the change is announced: within a moment.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let a = ask("first").await;
    let row_a = priced_row(&stack, &a).await;
    let cost_a = row_a.input_tokens as i64 * 1_000 + row_a.output_tokens as i64 * 2_000;
    assert_eq!(
        (
            row_a.price_version,
            row_a.plan.as_str(),
            nanos(&row_a.multiplier)
        ),
        (1, "pro", 2_000_000_000),
        "{row_a:?}"
    );
    assert_eq!(nanos(&row_a.cost), cost_a, "{row_a:?}");
    assert_eq!(nanos(&row_a.billed), cost_a * 2, "{row_a:?}");

    // The plan without its model multiplier: its default, ×1.5.
    cli(&["plans", "update", "pro", "--clear-models"]);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let b = ask("second").await;
    let row_b = priced_row(&stack, &b).await;
    let cost_b = row_b.input_tokens as i64 * 1_000 + row_b.output_tokens as i64 * 2_000;
    assert_eq!(
        (row_b.price_version, nanos(&row_b.multiplier)),
        (1, 1_500_000_000)
    );
    assert_eq!(nanos(&row_b.billed), cost_b * 3 / 2, "{row_b:?}");

    // Version 2: $3 in, $4 out. New requests are priced under it; the rows
    // priced under version 1 keep their price.
    cli(&[
        "prices",
        "set",
        "openai/gpt-4o-mini",
        "--input",
        "3",
        "--output",
        "4",
        "--note",
        "dearer",
    ]);
    let listed = cli(&["prices", "list"]);
    assert!(listed.contains("dearer"), "{listed}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let c = ask("third").await;
    let row_c = priced_row(&stack, &c).await;
    assert_eq!(row_c.price_version, 2, "{row_c:?}");
    assert_eq!(
        nanos(&row_c.cost),
        row_c.input_tokens as i64 * 3_000 + row_c.output_tokens as i64 * 4_000
    );
    let again = priced_row(&stack, &a).await;
    assert_eq!(
        (again.price_version, nanos(&again.cost)),
        (1, cost_a),
        "yesterday's price holds"
    );
    // Every change is in the audit log.
    let audit = cli(&["audit", "list", "--limit", "50"]);
    for action in [
        "price_version.create",
        "plan.create",
        "plan.update",
        "org.pricing",
    ] {
        assert!(audit.contains(action), "{action}: {audit}");
    }
}

/// `switchyard billing invoice --url URL --token ADMIN <args>`, run.
fn invoice_run(url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["billing", "invoice", "--url", url, "--token"])
        .arg(crate::tenants::ADMIN)
        .args(args)
        .output()
        .unwrap()
}

/// [`invoice_run`]'s output, or a panic with what it said.
fn invoice_cli(url: &str, args: &[&str]) -> Vec<u8> {
    let out = invoice_run(url, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct MonthSums {
    attempts: u64,
    input: u64,
    output: u64,
    total_cost: String,
    total_billed: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orgs_month_is_invoiced_from_its_rows_and_its_ledger_the_same_every_time() {
    use crate::tenants::{ADMIN, admin_cli};
    // Everything below must fall in one month: near a month's end, wait for
    // the next to begin.
    let month = || {
        let (y, m) = sy_limits::year_month(now());
        format!("{y:04}-{m:02}")
    };
    let (_, month_end) = sy_accounting::month_bounds(&month()).unwrap();
    if u64::from(month_end) < now() + 120 {
        let wait = u64::from(month_end) + 1 - now().min(u64::from(month_end));
        tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    }
    let period = month();
    let (store, tenants) = tenants_store("invoice").await;
    let org = store.create_org(&owner(), "Acme").await.unwrap();
    let spec = sy_control::store::KeySpec::named("k");
    let web = store.create_project(&owner(), org, "web").await.unwrap();
    let mobile = store.create_project(&owner(), org, "mobile").await.unwrap();
    let (_, web_key) = store.create_key(&owner(), web, &spec).await.unwrap();
    let (_, mobile_key) = store.create_key(&owner(), mobile, &spec).await.unwrap();
    let stripe =
        sy_mock_provider::MockProvider::start(sy_mock_provider::MockOptions::new("stripe"))
            .await
            .unwrap();
    let stack = Stack::start_with(StackOptions {
        sections: format!(
            "{tenants}\n[[admin_tokens]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\nrole = \"owner\"\n\
             [billing.stripe]\nwebhook_secrets = [\"{SECRET}\"]\n\
             api_base = \"http://{addr}\"\nsecret_key = \"sk_test_e2e\"\n\
             [redis]\nurl = \"{redis}\"\n",
            addr = stripe.addr(),
            redis = sy_test_support::redis_url()
        ),
        clickhouse: true,
        ..Default::default()
    })
    .await;
    let base = stack.base.clone();
    let org_id = org.to_string();
    // A prepaid org (its balance is held in Redis while requests run) with
    // $5 to start with.
    admin_cli(&base, &["orgs", "prepaid", &org_id, "true"]);
    admin_cli(
        &base,
        &["orgs", "credit", &org_id, "--usd", "5", "--ref", "opening"],
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let ask = |key: String| {
        let (http, url) = (stack.http.clone(), stack.url("/v1/chat/completions"));
        async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .json(&crate::stack::body("gpt-4o-mini", "hi"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    ask(web_key.key.clone()).await;
    ask(mobile_key.key.clone()).await;

    // A $12.00 top-up through Stripe in the middle of the month.
    let r = stack
        .http
        .post(stack.url(&format!("/admin/v1/orgs/{org_id}/topups")))
        .bearer_auth(ADMIN)
        .json(&json!({"provider": "stripe", "amount": 1200, "currency": "usd"}))
        .send()
        .await
        .unwrap();
    let order: Value = r.json().await.unwrap();
    let order_id = order["order_id"].as_str().unwrap().to_owned();
    let pay = format!(
        "{}?webhook={}&secret={SECRET}",
        order["payment_url"].as_str().unwrap(),
        stack.url("/webhooks/stripe")
    );
    let before = utc_now();
    let v: Value = stack
        .http
        .post(&pay)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["webhook_status"], 200, "{v}");
    let after = utc_now();
    ask(web_key.key.clone()).await;

    // Every attempt in ClickHouse and debited from the balance, then the month so far.
    let ch = stack.clickhouse.as_ref().unwrap();
    let sums_sql = format!(
        "SELECT count() AS attempts, sum(input_tokens) AS input, sum(output_tokens) AS output, \
         toString(sum(ifNull(cost, toDecimal64(0, 9)))) AS total_cost, \
         toString(sum(ifNull(billed, toDecimal64(0, 9)))) AS total_billed \
         FROM {}.requests FINAL WHERE org_id = '{org_id}'",
        ch.database
    );
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let sums = loop {
        let sums: MonthSums = sy_accounting::client(ch)
            .query(&sums_sql)
            .fetch_one()
            .await
            .unwrap();
        let (debits,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM ledger WHERE org_id = $1 AND kind = 'debit'")
                .bind(org)
                .fetch_one(store.pool())
                .await
                .unwrap();
        if sums.attempts == 3 && debits == 3 {
            break sums;
        }
        assert!(
            std::time::Instant::now() < until,
            "{sums:?}, {debits} debits"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let args = ["--org", org_id.as_str(), "--period", period.as_str()];
    let json_bytes = invoice_cli(&base, &args);
    let v: Value = serde_json::from_slice(&json_bytes).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["period"].as_str()),
        (Some("open"), Some(period.as_str()))
    );
    // It is what schemas/admin-openapi.json says an invoice is.
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(sy_test_support::repo_root().join("schemas/admin-openapi.json"))
            .unwrap(),
    )
    .unwrap();
    let schema = json!({"$ref": "#/components/schemas/Invoice", "components": doc["components"]});
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // Totals are ClickHouse's sums over the org's rows.
    let t = &v["totals"];
    assert_eq!(
        (t["requests"].as_u64(), t["attempts"].as_u64()),
        (Some(3), Some(sums.attempts))
    );
    assert_eq!(t["tokens"]["input"].as_u64(), Some(sums.input));
    assert_eq!(t["tokens"]["output"].as_u64(), Some(sums.output));
    let decimal = |s: &str| sy_billing::invoice::nanos_of_decimal(s).unwrap();
    assert_eq!(
        decimal(t["cost_usd"].as_str().unwrap()),
        decimal(&sums.total_cost)
    );
    assert_eq!(
        decimal(t["billed_usd"].as_str().unwrap()),
        decimal(&sums.total_billed)
    );
    assert!(decimal(&sums.total_billed) > 0, "{sums:?}");
    // One line per project (same model, version and multiplier), with names.
    let names: Vec<&str> = v["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["project_name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{v:#}");
    assert!(
        names.contains(&"web") && names.contains(&"mobile"),
        "{names:?}"
    );
    // The balance: nothing before the month; the opening credit and the
    // top-up, with its time; every attempt debited; the end is the ledger's sum.
    let b = &v["balance"];
    assert_eq!(b["start_usd"], "0.000000000");
    assert_eq!(b["credits_usd"], "17.000000000");
    assert_eq!(b["debits"], 3);
    assert_eq!(
        decimal(b["debited_usd"].as_str().unwrap()),
        decimal(&sums.total_billed)
    );
    let stored = crate::tenants::ledger_balance(&store, org).await;
    assert_eq!(decimal(b["end_usd"].as_str().unwrap()), i128::from(stored));
    let topup = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reference"] == format!("stripe:order:{order_id}"))
        .unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(topup["amount_usd"], "12.000000000");
    let at = topup["time"].as_str().unwrap();
    assert!(
        before.as_str() <= at && at <= after.as_str(),
        "{before} <= {at} <= {after}"
    );

    // Made again: the same bytes, JSON and CSV, from the CLI and the API.
    assert_eq!(invoice_cli(&base, &args), json_bytes);
    let csv_args = [&args[..], &["--format", "csv"]].concat();
    let csv = invoice_cli(&base, &csv_args);
    assert_eq!(invoice_cli(&base, &csv_args), csv);
    let r = stack
        .http
        .get(stack.url(&format!(
            "/admin/v1/orgs/{org_id}/invoices/{period}?format=csv"
        )))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(r.bytes().await.unwrap().to_vec(), csv);
    let text = String::from_utf8(csv).unwrap();
    assert!(text.contains(",credit,"), "{text}");
    assert!(
        text.contains(&format!(",12.000000000,stripe:order:{order_id},")),
        "{text}"
    );
    // --output writes the same bytes to a file.
    let file = std::env::temp_dir().join(format!("sy-invoice-{org_id}.json"));
    let out = invoice_cli(
        &base,
        &[&args[..], &["--output", file.to_str().unwrap()]].concat(),
    );
    assert!(out.is_empty());
    assert_eq!(std::fs::read(&file).unwrap(), json_bytes);
    let _ = std::fs::remove_file(&file);

    // Not a month, a month not begun, a format it has not: 400 in the admin
    // API's error format, and the CLI says so and fails.
    for (path, says) in [
        (
            format!("/admin/v1/orgs/{org_id}/invoices/2026-13"),
            "'period'",
        ),
        (
            format!("/admin/v1/orgs/{org_id}/invoices/2100-01"),
            "not begun",
        ),
        (
            format!("/admin/v1/orgs/{org_id}/invoices/{period}?format=xml"),
            "'format'",
        ),
        (
            format!("/admin/v1/orgs/{org_id}/invoices/{period}?from=1"),
            "Unknown parameter",
        ),
    ] {
        let r = stack
            .http
            .get(stack.url(&path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let e: Value = r.json().await.unwrap();
        assert!(
            e["error"]["message"].as_str().unwrap().contains(says),
            "{path}: {e}"
        );
    }
    let failed = invoice_run(&base, &["--org", &org_id, "--period", "2026-13"]);
    assert!(!failed.status.success());
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("400"),
        "{failed:?}"
    );
}

/// Now, UTC, as the ledger's entries print it (`2026-11-14T10:22:31.123456Z`).
fn utc_now() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}
