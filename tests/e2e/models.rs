//! `GET /v1/models` and `GET /v1/models/{id}` (issue 21): a tenant's key
//! sees the models, routers and pipelines it may name, each with the client
//! APIs it serves, its context window and what the key's org pays per
//! million tokens on each target (the price times the org's multiplier);
//! a scoped key sees only its scope, and a model outside it is not found.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::stack::{Stack, StackOptions};
use crate::tenants::{owner, tenants_store};

async fn get(stack: &Stack, key: &str, path: &str) -> (u16, Value) {
    let r = stack
        .http
        .get(stack.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn ids(list: &Value) -> Vec<&str> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_lists_what_it_may_use_with_surfaces_windows_and_its_orgs_prices() {
    let (store, tenants) = tenants_store("mdl").await;
    let actor = owner();
    // The org pays 150 % of the provider's price (the config's markup is 20 %).
    let plan = sy_control::pricing::Plan {
        name: "one-and-a-half".into(),
        multiplier_ppb: 1_500_000_000,
        model_multipliers: BTreeMap::new(),
        cache_hit_multiplier_ppb: None,
    };
    store.create_plan(&actor, &plan).await.unwrap();
    let org = store.create_org(&actor, "A").await.unwrap();
    store
        .set_org_pricing(&actor, org, Some(plan.name.clone()), None, BTreeMap::new())
        .await
        .unwrap();
    let project = store.create_project(&actor, org, "p").await.unwrap();
    let all = store
        .create_key(&actor, project, &sy_control::store::KeySpec::named("all"))
        .await
        .unwrap()
        .1
        .key;
    let mut spec = sy_control::store::KeySpec::named("scoped");
    spec.models = Some(vec!["gpt-4o-mini".into(), "pipeline:blog".into()]);
    let scoped = store
        .create_key(&actor, project, &spec)
        .await
        .unwrap()
        .1
        .key;
    let stack = Stack::start_with(StackOptions {
        sections: tenants,
        ..Default::default()
    })
    .await;

    // Everything the config declares, sorted, for the unscoped key.
    let (status, list) = get(&stack, &all, "/v1/models").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["object"], "list");
    let listed = ids(&list);
    for id in [
        "auto",
        "chain",
        "gpt-4o-mini",
        "text-embedding-3-small",
        "pipeline:blog",
    ] {
        assert!(listed.contains(&id), "{id} missing from {listed:?}");
    }
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    assert_eq!(listed, sorted);

    // A named model: chat APIs, its window, the org's price (0.15 and 0.60
    // per million at 150 %).
    let (status, m) = get(&stack, &all, "/v1/models/gpt-4o-mini").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(
        (m["id"].as_str(), m["object"].as_str()),
        (Some("gpt-4o-mini"), Some("model"))
    );
    let sy = &m["switchyard"];
    assert_eq!(sy["kind"], "model");
    assert_eq!(
        sy["surfaces"],
        serde_json::json!(["chat.completions", "messages", "responses"])
    );
    assert_eq!(sy["context_window"], 128_000);
    let target = &sy["targets"][0];
    assert_eq!(
        (target["provider"].as_str(), target["model"].as_str()),
        (Some("openai"), Some("gpt-4o-mini"))
    );
    assert_eq!(target["pricing"]["input"], "0.225", "{m}");
    assert_eq!(target["pricing"]["cached_input"], "0.1125", "{m}");
    assert_eq!(target["pricing"]["output"], "0.9", "{m}");
    // The same entry in the list.
    let in_list = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "gpt-4o-mini");
    assert_eq!(in_list, Some(&m));

    // An embeddings model says so; a chain's window is its smallest target's
    // (vLLM's 8,192) and a target without a price has none.
    let (_, e) = get(&stack, &all, "/v1/models/text-embedding-3-small").await;
    assert_eq!(
        e["switchyard"]["surfaces"],
        serde_json::json!(["embeddings"])
    );
    assert_eq!(e["switchyard"]["targets"][0]["pricing"]["input"], "0.03");
    let (_, chain) = get(&stack, &all, "/v1/models/chain").await;
    assert_eq!(chain["switchyard"]["context_window"], 8192);
    assert_eq!(chain["switchyard"]["targets"].as_array().unwrap().len(), 3);
    assert!(
        chain["switchyard"]["targets"][2]["pricing"].is_null(),
        "{chain}"
    );
    // A router lists each target once; a pipeline its steps.
    let (_, auto) = get(&stack, &all, "/v1/models/auto").await;
    assert_eq!(auto["switchyard"]["kind"], "router");
    let targets: Vec<(&str, &str)> = auto["switchyard"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["provider"].as_str().unwrap(),
                t["model"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        targets,
        vec![
            ("openai", "gpt-4o-mini"),
            ("anthropic", "claude-sonnet-4-5")
        ]
    );
    // A router serves the kinds its routes take.
    assert_eq!(
        auto["switchyard"]["surfaces"],
        serde_json::json!(["chat.completions", "messages", "responses"])
    );
    let (_, media) = get(&stack, &all, "/v1/models/auto:media").await;
    assert_eq!(
        media["switchyard"]["surfaces"],
        serde_json::json!([
            "images.generations",
            "images.edits",
            "audio.transcriptions",
            "audio.translations",
            "audio.speech",
            "rerank"
        ]),
        "{media}"
    );
    let (_, blog) = get(&stack, &all, "/v1/models/pipeline:blog").await;
    assert_eq!(blog["switchyard"]["kind"], "pipeline");
    assert_eq!(
        blog["switchyard"]["steps"],
        serde_json::json!(["draft", "critique", "rewrite"])
    );

    // A scoped key sees its scope only; outside it, and unknown: 404.
    let (_, list) = get(&stack, &scoped, "/v1/models").await;
    assert_eq!(ids(&list), vec!["gpt-4o-mini", "pipeline:blog"]);
    for (key, id) in [(&scoped, "auto"), (&all, "no-such-model")] {
        let (status, v) = get(&stack, key, &format!("/v1/models/{id}")).await;
        assert_eq!(status, 404, "{v}");
        assert_eq!(v["error"]["code"], "model_not_found", "{v}");
        assert_eq!(v["error"]["param"], "model", "{v}");
    }
    // A config file's key pays the config's markup (20 %).
    let (_, m) = get(&stack, crate::stack::KEY, "/v1/models/gpt-4o-mini").await;
    assert_eq!(
        m["switchyard"]["targets"][0]["pricing"]["input"], "0.18",
        "{m}"
    );
}
