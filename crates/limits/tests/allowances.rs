//! Allowances against a real Redis (scripts/test.sh starts one;
//! `SY_REDIS_URL` names it): busy keys' requests admitted from what a process
//! holds never pass a limit, small limits never get one, what is not used
//! goes back, and money drawn from one settles to what was billed.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use sy_limits::allowance::{Allowances, Want};
use sy_limits::leases::LeaseBook;
use sy_limits::{Ask, Budget, Decision, Limiter, Limits, Period, Scope, Settlement};

async fn limiter() -> Limiter {
    Limiter::connect(&sy_test_support::redis_url())
        .await
        .unwrap_or_else(|e| panic!("cannot reach Redis ({e}); run scripts/test.sh"))
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(sy_test_support::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn org() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn scope(org: &str, limits: Limits) -> Scope {
    Scope::of_org(org, "key", "x", "key x".into(), limits)
}

fn process(l: &Limiter, name: &str) -> Arc<Allowances> {
    let leases = LeaseBook::start(l.clone(), Duration::from_secs(30));
    Allowances::start(l.clone(), leases, name, false)
}

fn want(tokens: u32, money: Option<i64>, replicas: u32) -> Want {
    Want {
        tokens,
        money,
        hold_ms: 500,
        replicas,
    }
}

/// One request of a process: from its allowance, else asking Redis itself.
/// (admitted, drawn from the allowance)
async fn one(
    l: &Limiter,
    book: &Arc<Allowances>,
    scopes: &[Scope],
    o: &str,
    id: &str,
    replicas: u32,
) -> (bool, bool) {
    if book
        .draw("k\0m", scopes, &[], o, want(0, None, replicas))
        .is_some()
    {
        return (true, true);
    }
    let ask = Ask {
        request_id: id,
        tokens: 0,
        lease_ms: 30_000,
    };
    let d = l.admit(ask, scopes).await.unwrap();
    (matches!(d, Decision::Admitted(_)), false)
}

/// `n` requests of a busy set admitted from its pool, each holding a slot.
async fn slots(
    book: &Arc<Allowances>,
    scopes: &[Scope],
    o: &str,
    n: usize,
) -> Vec<sy_limits::allowance::Slot> {
    let mut held = Vec::new();
    let start = Instant::now();
    while held.len() < n {
        assert!(start.elapsed() < Duration::from_secs(5), "no slots");
        if let Some(d) = book.draw("k\0m", scopes, &[], o, want(0, None, 1)) {
            held.push(d.slot.expect("a slot"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    held
}

/// How many leases `scope`'s lease set holds in Redis.
async fn leases_in(scope: &Scope) -> usize {
    redis::cmd("ZCARD")
        .arg(format!("{}:conc", scope.prefix))
        .query_async(&mut redis().await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_busy_processes_never_admit_more_than_the_limit_and_leave_little_unused() {
    let l = limiter().await;
    let o = org();
    let scopes = vec![scope(
        &o,
        Limits {
            rpm: Some(3_000),
            ..Limits::default()
        },
    )];
    let books = [process(&l, "p1"), process(&l, "p2")];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (l, book, scopes, o) = (l.clone(), books[t % 2].clone(), scopes.clone(), o.clone());
        tasks.push(tokio::spawn(async move {
            let (mut admitted, mut drawn, mut refused_in_a_row) = (0u32, 0u32, 0u32);
            let mut i = 0;
            // Until this caller is refused 30 times in a row.
            while refused_in_a_row < 30 {
                // Drawing takes no await: let the refills run.
                tokio::task::yield_now().await;
                i += 1;
                let (yes, from_allowance) =
                    one(&l, &book, &scopes, &o, &format!("t{t}-{i}"), 2).await;
                match yes {
                    true => {
                        admitted += 1;
                        drawn += u32::from(from_allowance);
                        refused_in_a_row = 0;
                    }
                    false => refused_in_a_row += 1,
                }
            }
            (admitted, drawn)
        }));
    }
    let (mut admitted, mut drawn) = (0, 0);
    for t in tasks {
        let (a, d) = t.await.unwrap();
        admitted += a;
        drawn += d;
    }
    let secs = start.elapsed().as_secs_f64();
    // A full minute's worth at once, then 50 a second refill.
    let most = 3_000 + (secs * 50.0).ceil() as u32;
    assert!(
        admitted <= most,
        "{admitted} admitted in {secs:.1} s (at most {most})"
    );
    assert!(
        drawn >= 1_000,
        "allowances served {drawn} of {admitted}: they should serve most of a busy key's requests"
    );
    // What allowances held unused when the bucket ran dry is bounded: a
    // 1/(16 × 2) share of what was left, twice (one per process).
    assert!(admitted >= 2_800, "only {admitted} admitted of 3,000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_limit_never_gets_an_allowance() {
    let l = limiter().await;
    let o = org();
    let scopes = vec![scope(
        &o,
        Limits {
            rpm: Some(200),
            ..Limits::default()
        },
    )];
    let book = process(&l, "p1");
    let mut admitted = 0;
    for i in 0..260 {
        let (yes, drawn) = one(&l, &book, &scopes, &o, &format!("r{i}"), 1).await;
        assert!(!drawn, "request {i} drawn from an allowance under RPM 200");
        admitted += u32::from(yes);
        if i % 50 == 0 {
            // Room for a refill to come back, if one were granted.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    assert!((200..=205).contains(&admitted), "{admitted} admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_allowance_did_not_use_goes_back_to_the_bucket() {
    let l = limiter().await;
    let o = org();
    let s = scope(
        &o,
        Limits {
            rpm: Some(60_000),
            tpm: Some(6_000_000),
            ..Limits::default()
        },
    );
    let scopes = vec![s.clone()];
    let book = process(&l, "p1");
    let mut used = 0u32;
    let mut drawn = 0u32;
    // Busy for half a second: the process holds an allowance.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) {
        let w = want(100, None, 1);
        if book.draw("k\0m", &scopes, &[], &o, w).is_some() {
            drawn += 1;
        } else {
            let ask = Ask {
                request_id: &format!("r{used}"),
                tokens: 100,
                lease_ms: 30_000,
            };
            assert!(matches!(
                l.admit(ask, &scopes).await.unwrap(),
                Decision::Admitted(_)
            ));
        }
        used += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        drawn > 0,
        "no allowance in half a second of {used} requests"
    );
    // Idle: the allowance lapses and what it did not lend goes back.
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    let ask = Ask {
        request_id: "last",
        tokens: 100,
        lease_ms: 30_000,
    };
    let Decision::Admitted(rem) = l.admit(ask, &scopes).await.unwrap() else {
        panic!("refused")
    };
    let used = used + 1;
    // 1,000 a second refill: after ~2.3 s nothing can be missing but what
    // was really used, less the refill.
    let requests_missing = 60_000 - rem[0].requests.unwrap();
    assert!(
        requests_missing <= used,
        "{requests_missing} requests missing from the bucket, {used} used"
    );
    let tokens_missing = 6_000_000 - rem[0].tokens.unwrap();
    assert!(
        tokens_missing <= used * 100,
        "{tokens_missing} tokens missing from the bucket, {} used",
        used * 100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_drawn_from_an_allowance_settles_to_what_was_billed_and_the_rest_goes_back() {
    let l = limiter().await;
    let o = org();
    let budget = Budget::of_org(&o, "org", &o, 1_000_000_000, Period::Month);
    let budgets = vec![budget.clone()];
    let book = process(&l, "p1");
    let mut drawn = Vec::new();
    let start = Instant::now();
    while drawn.len() < 40 {
        assert!(start.elapsed() < Duration::from_secs(5), "no allowance");
        if let Some(d) = book.draw("k\0m", &[], &budgets, &o, want(0, Some(1_000), 1)) {
            drawn.push(d.money.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut r = redis().await;
    let held: i64 = redis::cmd("HGET")
        .arg(&budget.key)
        .arg("held")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(held >= 40 * 1_000, "the allowance holds {held}");
    for (i, (id, amount)) in drawn.iter().enumerate() {
        let settled = l
            .settle(Settlement {
                org: &o,
                request_id: &format!("r{i}"),
                attempt_id: &format!("r{i}-a"),
                buckets: &[],
                reserved: 0,
                used: 0,
                budgets: &[(budget.key.clone(), Period::Month.as_code())],
                billed_nanos: 600,
                allowance: Some((id, *amount)),
            })
            .await
            .unwrap();
        assert!(settled);
    }
    // The allowance lapses; what it did not lend goes back.
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    let (spent, held): (i64, i64) = redis::cmd("HMGET")
        .arg(&budget.key)
        .arg("spent")
        .arg("held")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(spent, 40 * 600);
    assert_eq!(held, 0, "nothing held once every request settled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_slots_are_leases_in_redis_for_every_request_it_admits() {
    let l = limiter().await;
    let o = org();
    let s = scope(
        &o,
        Limits {
            concurrency: Some(100_000),
            ..Limits::default()
        },
    );
    let scopes = vec![s.clone()];
    let book = process(&l, "p1");
    let held = slots(&book, &scopes, &o, 20).await;
    let leased = leases_in(&s).await;
    assert!(
        leased >= held.len(),
        "{leased} leases in Redis for {} requests in flight",
        held.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_slots_come_back_into_a_redis_that_lost_them() {
    let l = limiter().await;
    let o = org();
    let s = scope(
        &o,
        Limits {
            concurrency: Some(100_000),
            ..Limits::default()
        },
    );
    let scopes = vec![s.clone()];
    // A 3 s lease: the pools' slots are renewed every second.
    let leases = LeaseBook::start(l.clone(), Duration::from_secs(3));
    let book = Allowances::start(l.clone(), leases, "p1", false);
    let held = slots(&book, &scopes, &o, 20).await;
    // Redis forgets every lease (a restart without its data).
    redis::cmd("DEL")
        .arg(format!("{}:conc", s.prefix))
        .query_async::<()>(&mut redis().await)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let leased = leases_in(&s).await;
    assert!(
        leased >= held.len(),
        "{leased} leases back in Redis for {} requests in flight",
        held.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_key_with_a_small_concurrency_asks_redis_for_every_request() {
    // RPM leaves room for allowances, but 20 in flight is too few for a pool
    // (4 slots would be more than 1/16 of it): every request holds a lease
    // of its own, none is admitted from memory.
    let l = limiter().await;
    let o = org();
    let s = scope(
        &o,
        Limits {
            rpm: Some(100_000),
            concurrency: Some(20),
            ..Limits::default()
        },
    );
    let scopes = vec![s.clone()];
    let book = process(&l, "p1");
    for i in 0..300 {
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        assert!(
            book.draw("k\0m", &scopes, &[], &o, want(0, None, 1))
                .is_none(),
            "request {i} admitted from memory under a concurrency of 20"
        );
    }
    let leased = leases_in(&s).await;
    assert_eq!(
        leased, 0,
        "no pool slot may be held under a concurrency of 20"
    );
}
