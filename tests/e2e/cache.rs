//! The response cache end to end (issue 20): tenants' keys from PostgreSQL,
//! entries in the real Redis, usage rows in ClickHouse, through the real
//! `switchyard` binary. Two orgs never share an entry; one org's repeat is
//! replayed byte for byte (JSON and SSE, Chat and Messages, tool calls
//! included); what must not be stored is not; a hit's usage row says
//! `cache_hit`, costs nothing and is billed at the plan's cache-hit
//! multiplier; with Redis gone requests are served uncached.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sy_protocol::header as hdr;

use crate::limits::{free_port, private_redis};
use crate::stack::{Stack, StackOptions};
use crate::tenants::{owner, tenants_store};

/// A request's answer: status, `x-switchyard-cache`, request id, body bytes.
struct Answer {
    status: u16,
    cache: String,
    request_id: String,
    body: Vec<u8>,
    /// `Server-Timing` (every request here asks for its stages).
    timing: String,
}

async fn send(stack: &Stack, path: &str, key: &str, body: &Value, cache: Option<&str>) -> Answer {
    let mut req = stack
        .http
        .post(stack.url(path))
        .bearer_auth(key)
        .header(hdr::TIMING, "stages")
        .json(body);
    if let Some(c) = cache {
        req = req.header(hdr::CACHE, c);
    }
    if path.ends_with("/messages") {
        req = req.header("anthropic-version", "2023-06-01");
    }
    let resp = req.send().await.unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (status, cache, request_id, timing) = (
        resp.status().as_u16(),
        header(hdr::CACHE),
        header(hdr::REQUEST_ID),
        header(hdr::SERVER_TIMING),
    );
    let body = resp.bytes().await.unwrap().to_vec();
    Answer {
        status,
        cache,
        request_id,
        body,
        timing,
    }
}

fn chat_body(prompt: &str) -> Value {
    json!({"model": "gpt-4o-mini", "temperature": 0,
           "messages": [{"role": "user", "content": prompt}]})
}

/// Sends `body` twice with `key`: the first must miss, the second hit with
/// the first's bytes, and only the first reach the provider.
async fn miss_then_hit(stack: &Stack, path: &str, key: &str, body: &Value) -> (Answer, Answer) {
    let before = stack.upstream_requests();
    let first = send(stack, path, key, body, None).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.cache, "miss");
    // The answer is stored off the request path, right after its last byte.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = send(stack, path, key, body, None).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.cache, "hit", "{path} {body}");
    assert_eq!(
        String::from_utf8_lossy(&second.body),
        String::from_utf8_lossy(&first.body),
        "a hit replays the answer byte for byte"
    );
    assert_eq!(stack.upstream_requests(), before + 1, "one provider call");
    // Where the time went: the miss's includes its provider call, the hit's
    // ends with its lookup and answer.
    assert!(first.timing.contains("provider;dur="), "{}", first.timing);
    assert!(!second.timing.contains("provider"), "{}", second.timing);
    assert!(
        second.timing.contains("limits;dur=") && second.timing.contains("relay;dur="),
        "{}",
        second.timing
    );
    (first, second)
}

/// Sends `body` twice with `key` (and `cache`): neither is answered from the
/// cache, and both reach the provider.
async fn never_stored(stack: &Stack, key: &str, body: &Value, cache: Option<&str>, says: &str) {
    let before = stack.upstream_requests();
    for _ in 0..2 {
        let a = send(stack, "/v1/chat/completions", key, body, cache).await;
        assert_eq!(a.cache, says, "{body}");
        // Stores happen off the request path: give one time to land.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(stack.upstream_requests(), before + 2, "{body}");
}

/// A usage row's facts by request id: (cache_hit, cost, billed, input
/// tokens, output tokens), waiting until it is there.
async fn row(stack: &Stack, request_id: &str) -> (u8, i64, i64, u64, u64) {
    let c = stack.clickhouse.as_ref().unwrap();
    let client = sy_accounting::client(c);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let rows: Vec<(u8, String, String, u64, u64)> = client
            .query(&format!(
                "SELECT cache_hit, toString(assumeNotNull(cost)), toString(assumeNotNull(billed)), \
                 input_tokens, output_tokens FROM {}.requests FINAL WHERE request_id = toUUID(?)",
                c.database
            ))
            .bind(request_id)
            .fetch_all()
            .await
            .unwrap();
        if let Some((hit, cost, billed, i, o)) = rows.into_iter().next() {
            let nanos = |s: &str| sy_config::price::parse_nanos(s.trim_start_matches('-')).unwrap();
            return (hit, nanos(&cost), nanos(&billed), i, o);
        }
        assert!(Instant::now() < until, "no usage row for {request_id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const CACHE: &str =
    "\n[cache]\nenabled = true\nmodels = [\"gpt-4o-mini\"]\nstore_tool_calls = true\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_never_crosses_orgs_replays_byte_for_byte_and_bills_hits_by_the_plan() {
    let (store, tenants) = tenants_store("rc").await;
    let actor = owner();
    // Org A is on a plan that bills a hit at half a miss; org B on none
    // (the config's default: hits are free).
    let plan = sy_control::pricing::Plan {
        name: "half-hits".into(),
        multiplier_ppb: 1_000_000_000,
        model_multipliers: BTreeMap::new(),
        cache_hit_multiplier_ppb: Some(500_000_000),
    };
    store.create_plan(&actor, &plan).await.unwrap();
    let a = store.create_org(&actor, "A").await.unwrap();
    store
        .set_org_pricing(&actor, a, Some(plan.name.clone()), None, BTreeMap::new())
        .await
        .unwrap();
    let b = store.create_org(&actor, "B").await.unwrap();
    let mut keys = Vec::new();
    for (org, project) in [(a, "p1"), (a, "p2"), (b, "p")] {
        let p = store.create_project(&actor, org, project).await.unwrap();
        let spec = sy_control::store::KeySpec::named("k");
        keys.push(store.create_key(&actor, p, &spec).await.unwrap().1.key);
    }
    let (a1, a2, kb) = (&keys[0], &keys[1], &keys[2]);
    let stack = Stack::start_with(StackOptions {
        sections: format!(
            "{tenants}\n[redis]\nurl = \"{}\"\n{CACHE}",
            sy_test_support::redis_url()
        ),
        clickhouse: true,
        ..Default::default()
    })
    .await;
    let chat = "/v1/chat/completions";
    // A fresh prompt per run: the test Redis outlives the stack.
    let run = uuid::Uuid::new_v4().simple().to_string();
    let prompt = |what: &str| format!("{what} {run} [[mock:tokens=12]]");

    // Same org, same project: a miss, then the same bytes from the cache.
    let body = chat_body(&prompt("What is a cache?"));
    let (miss_a, hit_a) = miss_then_hit(&stack, chat, a1, &body).await;
    // Another org: its own miss, never A's entry; then its own hit.
    let (_, hit_b) = miss_then_hit(&stack, chat, kb, &body).await;
    // Another project of org A: entries are per project unless shared.
    let before = stack.upstream_requests();
    assert_eq!(send(&stack, chat, a2, &body, None).await.cache, "miss");
    assert_eq!(stack.upstream_requests(), before + 1);

    // Streamed, with the usage chunk: the same events, `[DONE]` included.
    let mut streamed = chat_body(&prompt("Stream a cache"));
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (s, _) = miss_then_hit(&stack, chat, a1, &streamed).await;
    let text = String::from_utf8_lossy(&s.body).into_owned();
    assert!(
        text.contains("\"usage\"") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    // The same request not streamed is another entry (other bytes).
    streamed["stream"] = json!(false);
    streamed.as_object_mut().unwrap().remove("stream_options");
    assert_eq!(send(&stack, chat, a1, &streamed, None).await.cache, "miss");

    // Anthropic's Messages, streamed: its own events replayed.
    let messages = json!({"model": "gpt-4o-mini", "max_tokens": 100, "stream": true,
        "messages": [{"role": "user", "content": prompt("Messages cache")}]});
    let (m, _) = miss_then_hit(&stack, "/v1/messages", a1, &messages).await;
    assert!(String::from_utf8_lossy(&m.body).contains("message_stop"));

    // Tool calls (allowed in this config), streamed in fragments.
    let mut tools = chat_body(&format!("Weather {run}? [[mock:tool_call=get_weather]]"));
    tools["stream"] = json!(true);
    tools["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]);
    let (t, _) = miss_then_hit(&stack, chat, a1, &tools).await;
    assert!(String::from_utf8_lossy(&t.body).contains("tool_calls"));

    // Never stored: an answer cut by max_tokens, a hot temperature (unless
    // the request opts in), an error, several choices.
    let length = chat_body(&format!("Long {run} [[mock:finish=length]]"));
    never_stored(&stack, a1, &length, None, "miss").await;
    let mut hot = chat_body(&prompt("Hot"));
    hot["temperature"] = json!(1.5);
    never_stored(&stack, a1, &hot, None, "miss").await;
    // With the opt-in it is stored (and then a request without it hits too).
    let mut hot2 = chat_body(&prompt("Hotter"));
    hot2["temperature"] = json!(1.5);
    let before = stack.upstream_requests();
    send(&stack, chat, a1, &hot2, Some("use, any-temperature")).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(send(&stack, chat, a1, &hot2, None).await.cache, "hit");
    assert_eq!(stack.upstream_requests(), before + 1);
    let before = stack.upstream_requests();
    let failing = chat_body(&format!("Fail {run} [[mock:status=500]]"));
    for _ in 0..2 {
        let a = send(&stack, chat, a1, &failing, None).await;
        assert!(a.status >= 500, "{}", a.status);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(
        stack.upstream_requests(),
        before + 2,
        "errors are not stored"
    );
    let mut several = chat_body(&prompt("Two choices"));
    several["n"] = json!(2);
    never_stored(&stack, a1, &several, None, "bypass").await;

    // The request's own say: bypass neither looks nor stores; refresh does
    // not look but stores; max-age refuses an entry older than it.
    never_stored(&stack, a1, &body, Some("bypass"), "bypass").await;
    let before = stack.upstream_requests();
    let refreshed = send(&stack, chat, a1, &body, Some("refresh")).await;
    assert_eq!(refreshed.cache, "miss");
    assert_eq!(stack.upstream_requests(), before + 1);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        send(&stack, chat, a1, &body, Some("max-age=0")).await.cache,
        "miss"
    );
    let again = send(&stack, chat, a1, &body, None).await;
    assert_eq!(again.cache, "hit");
    // A directive that does not read is a 400 in the client's format.
    let bad = send(&stack, chat, a1, &body, Some("sometimes")).await;
    assert_eq!(bad.status, 400);
    let e: Value = serde_json::from_slice(&bad.body).unwrap();
    assert_eq!(e["error"]["param"], hdr::CACHE);

    // Usage rows: a hit names itself, costs nothing, carries the stored
    // answer's tokens, and is billed at the org's plan's multiplier of the miss.
    let (hit, cost, billed, input, output) = row(&stack, &miss_a.request_id).await;
    assert_eq!(hit, 0);
    assert!(cost > 0 && billed > 0, "{cost} {billed}");
    let (h, c, bh, i, o) = row(&stack, &hit_a.request_id).await;
    assert_eq!((h, c), (1, 0));
    assert_eq!((i, o), (input, output));
    assert!((bh - billed / 2).abs() <= 1, "{bh} vs half of {billed}");
    let (h, c, bh, _, _) = row(&stack, &hit_b.request_id).await;
    assert_eq!((h, c, bh), (1, 0, 0), "org B has no plan: hits are free");
    assert!(
        stack
            .metrics()
            .await
            .contains("switchyard_cache_lookups_total{result=\"hit\"}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_requests_are_served_uncached_and_cached_again_when_it_is_back() {
    let port = free_port();
    let redis = private_redis(port);
    let (store, tenants) = tenants_store("rd").await;
    let actor = owner();
    let org = store.create_org(&actor, "A").await.unwrap();
    let p = store.create_project(&actor, org, "p").await.unwrap();
    // This project turns the cache on itself (the config names no model).
    store
        .set_limits(
            &actor,
            sy_control::views::LimitTarget::Project(p),
            &sy_control::views::LimitChange {
                cache: Some(Some(true)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let spec = sy_control::store::KeySpec::named("k");
    let key = store.create_key(&actor, p, &spec).await.unwrap().1.key;
    let stack = Stack::start_with(StackOptions {
        sections: format!(
            "{tenants}\n[redis]\nurl = \"redis://127.0.0.1:{port}\"\n\n[cache]\nenabled = true\n"
        ),
        ..Default::default()
    })
    .await;
    let chat = "/v1/chat/completions";
    let body = chat_body("Cache me while you can [[mock:tokens=5]]");
    miss_then_hit(&stack, chat, &key, &body).await;
    drop(redis);
    let before = stack.upstream_requests();
    for _ in 0..3 {
        let a = send(&stack, chat, &key, &body, None).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.cache, "miss");
    }
    assert_eq!(stack.upstream_requests(), before + 3, "served uncached");
    // Back (empty): cached again.
    let _redis = private_redis(port);
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let first = send(&stack, chat, &key, &body, None).await;
        assert_eq!(first.status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
        if send(&stack, chat, &key, &body, None).await.cache == "hit" {
            break;
        }
        assert!(Instant::now() < until, "the cache never came back");
    }
}
