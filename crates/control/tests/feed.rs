//! The key feed against real PostgreSQL and NATS: every follower applies a
//! change the store commits, a revocation within a second, and a follower
//! that reconnects reloads what it missed.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::{actor, store};
use sy_control::feed::{self, LiveKeys, Notifier};
use sy_control::keytable::Refused;
use sy_control::store::KeySpec;
use sy_test_support::{NatsServer, eventually};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn knows(live: &LiveKeys, key: &str) -> bool {
    live.authenticate(key, now_ms()).is_ok()
}

#[tokio::test]
async fn every_follower_applies_a_committed_change_and_drops_a_revoked_key_at_once() {
    let subject = format!("{}.control.keys", sy_test_support::unique_namespace());
    let nats = sy_test_support::nats().await;
    let s = store()
        .await
        .announcing(Notifier::new(nats.clone(), subject.clone()));
    let org = s.create_org(&actor(), "Acme").await.unwrap();
    let project = s.create_project(&actor(), org, "p").await.unwrap();
    let (before, b) = s
        .create_key(&actor(), project, &KeySpec::named("before"))
        .await
        .unwrap();
    let hour = Duration::from_secs(3600);
    // Two replicas, each on its own connection; neither resyncs during the test.
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let client = sy_test_support::nats().await;
        replicas.push(
            feed::follow(s.clone(), client, subject.clone(), hour)
                .await
                .unwrap(),
        );
    }
    for live in &replicas {
        assert!(knows(live, &b.key), "loaded at start");
    }
    // A key made after they started reaches both without a reload.
    let (_, a) = s
        .create_key(&actor(), project, &KeySpec::named("after"))
        .await
        .unwrap();
    for live in &replicas {
        assert!(eventually(Duration::from_secs(2), || knows(live, &a.key)).await);
    }
    // A rotation with no grace: the old secret stops, the new one works.
    let rotated = s.rotate_key(&actor(), before, 0).await.unwrap();
    for live in &replicas {
        assert!(eventually(Duration::from_secs(2), || knows(live, &rotated.key)).await);
        assert_eq!(
            live.authenticate(&b.key, now_ms()).err(),
            Some(Refused::Unknown)
        );
    }
    // A revocation: refused on both within a second of the store's answer.
    let started = Instant::now();
    s.revoke_key(&actor(), before).await.unwrap();
    for live in &replicas {
        assert!(eventually(Duration::from_secs(1), || !knows(live, &rotated.key)).await);
        assert_eq!(live.grant_of(before), None);
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(replicas.iter().all(|l| l.len() == 1));
}

#[tokio::test]
async fn a_follower_that_reconnects_reloads_what_it_missed() {
    let subject = "sy.control.keys".to_owned();
    let mut server = NatsServer::start().await;
    let client = async_nats::ConnectOptions::new()
        .max_reconnects(None)
        .reconnect_delay_callback(|_| Duration::from_millis(50))
        .connect(server.url())
        .await
        .unwrap();
    // This store does not announce: what the follower learns, it learns by reloading.
    let s = store().await;
    let org = s.create_org(&actor(), "Acme").await.unwrap();
    let project = s.create_project(&actor(), org, "p").await.unwrap();
    let (id, k) = s
        .create_key(&actor(), project, &KeySpec::named("k"))
        .await
        .unwrap();
    let live = feed::follow(s.clone(), client, subject, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(knows(&live, &k.key));
    server.stop();
    s.revoke_key(&actor(), id).await.unwrap();
    let (_, n) = s
        .create_key(&actor(), project, &KeySpec::named("new"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(knows(&live, &k.key), "no reconnect yet, nothing told it");
    server.restart().await;
    assert!(
        eventually(Duration::from_secs(5), || !knows(&live, &k.key)
            && knows(&live, &n.key))
        .await
    );
}

#[tokio::test]
async fn a_follower_resyncs_on_its_period_even_if_an_announcement_was_lost() {
    let subject = format!("{}.control.keys", sy_test_support::unique_namespace());
    let s = store().await;
    let org = s.create_org(&actor(), "Acme").await.unwrap();
    let project = s.create_project(&actor(), org, "p").await.unwrap();
    let (id, k) = s
        .create_key(&actor(), project, &KeySpec::named("k"))
        .await
        .unwrap();
    let client = sy_test_support::nats().await;
    let live = feed::follow(s.clone(), client, subject, Duration::from_secs(2))
        .await
        .unwrap();
    // Revoked by a store that does not announce: only the resync can tell.
    s.revoke_key(&actor(), id).await.unwrap();
    assert!(knows(&live, &k.key));
    assert!(eventually(Duration::from_secs(5), || !knows(&live, &k.key)).await);
}
