//! Price versions and plans against a real PostgreSQL: a version is made from
//! the latest (version 1 from the config's prices), takes effect in order and
//! never in the past, and is never changed; plans and an org's own
//! multipliers resolve as documented; every change is audited; the key
//! table carries the org's multipliers and the versions.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;

use sy_config::RawPrice;
use sy_control::pricing::{NewPriceVersion, Plan, PriceBook};
use sy_control::store::StoreError;

fn price(input: &str, output: &str) -> RawPrice {
    RawPrice::new(input, output)
}

fn set(key: &str, p: RawPrice) -> NewPriceVersion {
    NewPriceVersion {
        set: [(key.to_owned(), p)].into(),
        ..NewPriceVersion::default()
    }
}

async fn audited(store: &sy_control::store::Store, action: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM audit_log WHERE action = $1")
        .bind(action)
        .fetch_one(store.pool())
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn price_versions_build_on_each_other_take_effect_in_order_and_never_change() {
    let store = common::store().await;
    let actor = common::actor();
    let base: BTreeMap<String, RawPrice> = [
        ("openai/gpt-4o-mini".to_owned(), price("0.15", "0.6")),
        ("openai/gpt-4o".to_owned(), price("2.5", "10")),
    ]
    .into();
    // Version 1: the config's prices with one changed.
    let v1 = store
        .create_price_version(&actor, set("openai/gpt-4o", price("2", "8")), &base)
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    assert_eq!(v1.prices.len(), 2);
    assert_eq!(v1.prices["openai/gpt-4o-mini"], base["openai/gpt-4o-mini"]);
    assert_eq!(v1.prices["openai/gpt-4o"].input, "2");
    // Version 2, an hour from now: from version 1, one removed, one added.
    let later = v1.effective_at_ms + 3_600_000;
    let v2 = store
        .create_price_version(
            &actor,
            NewPriceVersion {
                effective_at_ms: Some(later),
                note: "December".into(),
                set: [("vllm/meta-llama/Llama-3-8B".to_owned(), price("0.1", "0.1"))].into(),
                remove: vec!["openai/gpt-4o-mini".into()],
            },
            &base,
        )
        .await
        .unwrap();
    assert_eq!((v2.version, v2.effective_at_ms), (2, later));
    assert!(!v2.prices.contains_key("openai/gpt-4o-mini"));
    assert_eq!(v2.prices["openai/gpt-4o"].input, "2", "kept from version 1");

    // Refused: in the past, before version 2, unknown removal, bad prices and keys.
    let refusals = [
        NewPriceVersion {
            effective_at_ms: Some(v1.effective_at_ms - 60_000),
            ..set("openai/x", price("1", "1"))
        },
        NewPriceVersion {
            effective_at_ms: Some(later - 1),
            ..set("openai/x", price("1", "1"))
        },
        NewPriceVersion {
            remove: vec!["openai/nothing".into()],
            ..NewPriceVersion::default()
        },
        set("openai/x", price("-1", "1")),
        set("gpt-4o", price("1", "1")),
    ];
    for (i, r) in refusals.into_iter().enumerate() {
        let e = store.create_price_version(&actor, r, &base).await;
        assert!(matches!(e, Err(StoreError::Invalid(_))), "{i}: {e:?}");
    }
    assert_eq!(store.price_versions().await.unwrap().len(), 2);
    // Never changed, never deleted, even by hand.
    for sql in [
        "UPDATE price_versions SET note = 'x' WHERE version = 1",
        "DELETE FROM price_versions WHERE version = 1",
    ] {
        assert!(
            sqlx::query(sql).execute(store.pool()).await.is_err(),
            "{sql}"
        );
    }
    assert_eq!(audited(&store, "price_version.create").await, 2);

    // In memory: each request by when it was received.
    let book = PriceBook::new(&store.price_versions().await.unwrap());
    let input = |at: i64, p: &str, m: &str| {
        book.price_at(at, p, m)
            .map(|(v, price)| (v, price.map(|p| p.input)))
    };
    assert_eq!(input(v1.effective_at_ms - 1, "openai", "gpt-4o"), None);
    assert_eq!(
        input(v1.effective_at_ms, "openai", "gpt-4o-mini"),
        Some((1, Some(150_000_000)))
    );
    assert_eq!(input(later, "openai", "gpt-4o-mini"), Some((2, None)));
    assert_eq!(
        input(later, "vllm", "meta-llama/Llama-3-8B"),
        Some((2, Some(100_000_000)))
    );
}

#[tokio::test]
async fn plans_and_an_orgs_own_multipliers_reach_its_keys_grants() {
    let store = common::store().await;
    let actor = common::actor();
    let org = store.create_org(&actor, "Acme").await.unwrap();
    let project = store.create_project(&actor, org, "p").await.unwrap();
    let (key, _) = store
        .create_key(&actor, project, &sy_control::store::KeySpec::named("k"))
        .await
        .unwrap();
    let pro = Plan {
        name: "pro".into(),
        multiplier_ppb: 1_200_000_000,
        model_multipliers: [("o3".to_owned(), 2_000_000_000)].into(),
        cache_hit_multiplier_ppb: Some(250_000_000),
    };
    store.create_plan(&actor, &pro).await.unwrap();
    assert!(matches!(
        store.create_plan(&actor, &pro).await,
        Err(StoreError::Conflict(_))
    ));
    for bad in [
        Plan {
            name: "Pro!".into(),
            ..pro.clone()
        },
        Plan {
            name: "free".into(),
            multiplier_ppb: 0,
            ..pro.clone()
        },
    ] {
        assert!(matches!(
            store.create_plan(&actor, &bad).await,
            Err(StoreError::Invalid(_))
        ));
    }
    let grant = |key_id| {
        let store = store.clone();
        async move {
            sy_control::keytable::KeyTable::load(&store)
                .await
                .unwrap()
                .grant_of(key_id)
                .unwrap()
        }
    };
    assert_eq!(
        grant(key).await.pricing.multiplier("o3"),
        None,
        "no plan: the markup"
    );

    store
        .set_org_pricing(&actor, org, Some("pro".into()), None, BTreeMap::new())
        .await
        .unwrap();
    let g = grant(key).await;
    assert_eq!(g.pricing.plan.as_deref(), Some("pro"));
    assert_eq!(g.pricing.multiplier("o3"), Some(2_000_000_000));
    assert_eq!(g.pricing.multiplier("gpt-4o"), Some(1_200_000_000));
    // The org's own: a default, and one model.
    store
        .set_org_pricing(
            &actor,
            org,
            Some("pro".into()),
            Some(1_100_000_000),
            [("gpt-4o".to_owned(), 900_000_000)].into(),
        )
        .await
        .unwrap();
    let g = grant(key).await;
    assert_eq!(g.pricing.multiplier("gpt-4o"), Some(900_000_000));
    assert_eq!(g.pricing.multiplier("o3"), Some(1_100_000_000));
    assert_eq!(
        g.pricing.cache_hit_ppb,
        Some(250_000_000),
        "the plan's hit price"
    );
    // A plan change reaches its orgs; a plan orgs are on cannot go.
    store
        .update_plan(&actor, "pro", None, Some(BTreeMap::new()), Some(None))
        .await
        .unwrap();
    assert!(grant(key).await.pricing.plan_model_multipliers.is_empty());
    assert_eq!(grant(key).await.pricing.cache_hit_ppb, None);
    assert!(matches!(
        store.delete_plan(&actor, "pro").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .set_org_pricing(&actor, org, Some("gold".into()), None, BTreeMap::new())
            .await,
        Err(StoreError::NotFound("plan"))
    ));
    store
        .set_org_pricing(&actor, org, None, None, BTreeMap::new())
        .await
        .unwrap();
    store.delete_plan(&actor, "pro").await.unwrap();
    assert_eq!(grant(key).await.pricing.multiplier("o3"), None);
    for action in ["plan.create", "plan.update", "plan.delete", "org.pricing"] {
        assert!(audited(&store, action).await > 0, "{action}");
    }
}
