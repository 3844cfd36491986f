//! The limits engine against a real Redis (scripts/test.sh starts one;
//! `SY_REDIS_URL` names it). Each test uses an org of its own (a fresh id), so
//! its buckets are its own.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use sy_limits::{Ask, Decision, Kind, Limiter, Limits, Scope, Settlement};

async fn limiter() -> Limiter {
    Limiter::connect(&sy_test_support::redis_url())
        .await
        .unwrap_or_else(|e| panic!("cannot reach Redis ({e}); run scripts/test.sh"))
}

fn org() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn scope(org: &str, kind: &str, limits: Limits) -> Scope {
    Scope::of_org(org, kind, "x", format!("{kind} x"), limits)
}

fn ask(id: &str, tokens: u32) -> Ask<'_> {
    Ask {
        request_id: id,
        tokens,
        lease_ms: 60_000,
    }
}

fn admitted(d: &Decision) -> bool {
    matches!(d, Decision::Admitted(_))
}

#[tokio::test]
async fn exactly_the_limit_is_admitted_from_many_concurrent_callers() {
    let l = limiter().await;
    let o = org();
    let rpm = Limits {
        rpm: Some(100),
        ..Limits::default()
    };
    let scopes = vec![scope(&o, "key", rpm)];
    let tasks: Vec<_> = (0..600)
        .map(|i| {
            let (l, scopes) = (l.clone(), scopes.clone());
            tokio::spawn(async move {
                let id = format!("r{i}");
                l.admit(ask(&id, 0), &scopes).await.unwrap()
            })
        })
        .collect();
    let mut yes = 0;
    for t in tasks {
        if admitted(&t.await.unwrap()) {
            yes += 1;
        }
    }
    assert_eq!(yes, 100);
}

#[tokio::test]
async fn a_request_refused_by_one_scope_takes_nothing_from_the_others() {
    let l = limiter().await;
    let o = org();
    let tight = scope(
        &o,
        "key",
        Limits {
            rpm: Some(2),
            ..Limits::default()
        },
    );
    let wide = scope(
        &o,
        "org",
        Limits {
            rpm: Some(10),
            tpm: Some(10_000),
            concurrency: Some(5),
        },
    );
    let both = vec![wide.clone(), tight.clone()];
    for i in 0..2 {
        assert!(admitted(
            &l.admit(ask(&format!("a{i}"), 100), &both).await.unwrap()
        ));
    }
    for i in 0..5 {
        let d = l.admit(ask(&format!("b{i}"), 100), &both).await.unwrap();
        assert!(
            matches!(
                d,
                Decision::Refused {
                    scope: 1,
                    kind: Kind::Requests,
                    ..
                }
            ),
            "{d:?}"
        );
    }
    // The wide scope saw two requests, not seven: 8 left this minute.
    let Decision::Admitted(left) = l.admit(ask("c", 100), &[wide]).await.unwrap() else {
        panic!("the wide scope alone admits");
    };
    assert_eq!(left[0].requests, Some(7));
    assert_eq!(left[0].tokens, Some(10_000 - 300));
}

#[tokio::test]
async fn concurrency_leases_are_released_renewed_and_expire_by_themselves() {
    let l = limiter().await;
    let o = org();
    let limits = Limits {
        concurrency: Some(3),
        ..Limits::default()
    };
    let scopes = vec![scope(&o, "key", limits)];
    let short = |id: &'static str| Ask {
        request_id: id,
        tokens: 0,
        lease_ms: 300,
    };
    for id in ["r1", "r2", "r3"] {
        assert!(admitted(&l.admit(short(id), &scopes).await.unwrap()));
    }
    let d = l.admit(short("r4"), &scopes).await.unwrap();
    let Decision::Refused {
        kind: Kind::Concurrency,
        retry_after_ms: Some(wait),
        ..
    } = d
    else {
        panic!("{d:?}");
    };
    assert!(wait <= 300, "{wait}");
    // One ends: one more fits.
    l.release("r1", &scopes).await.unwrap();
    assert!(admitted(&l.admit(short("r4"), &scopes).await.unwrap()));
    // r2 keeps streaming (renewed); r3 and r4 belong to a process that died.
    tokio::time::sleep(Duration::from_millis(200)).await;
    l.renew("r2", &scopes, 1_000).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // r3 and r4 expired, r2 holds: two fit, not three.
    assert!(admitted(&l.admit(short("r5"), &scopes).await.unwrap()));
    assert!(admitted(&l.admit(short("r6"), &scopes).await.unwrap()));
    assert!(!admitted(&l.admit(short("r7"), &scopes).await.unwrap()));
}

#[tokio::test]
async fn tokens_are_reserved_then_settled_to_what_was_used_once() {
    let l = limiter().await;
    let o = org();
    let limits = Limits {
        tpm: Some(2_000),
        ..Limits::default()
    };
    let scopes = vec![scope(&o, "key", limits)];
    assert!(admitted(&l.admit(ask("a", 1_000), &scopes).await.unwrap()));
    assert!(admitted(&l.admit(ask("b", 1_000), &scopes).await.unwrap()));
    assert!(!admitted(&l.admit(ask("c", 1_000), &scopes).await.unwrap()));
    // "a" used 100 of its 1,000: 900 come back, once.
    let buckets = sy_limits::token_buckets(&scopes);
    let settle = |attempt_id| Settlement {
        org: &o,
        request_id: "a",
        attempt_id,
        buckets: &buckets,
        reserved: 1_000,
        used: 100,
        budgets: &[],
        billed_nanos: 0,
        allowance: None,
    };
    assert!(l.settle(settle("a-1")).await.unwrap());
    assert!(
        !l.settle(settle("a-1")).await.unwrap(),
        "a redelivery settles nothing"
    );
    assert!(admitted(&l.admit(ask("c", 800), &scopes).await.unwrap()));
    assert!(!admitted(&l.admit(ask("d", 200), &scopes).await.unwrap()));
    // A request larger than a minute's tokens never fits, and says so.
    let d = l.admit(ask("huge", 2_001), &scopes).await.unwrap();
    assert!(
        matches!(
            d,
            Decision::Refused {
                kind: Kind::Tokens,
                retry_after_ms: None,
                ..
            }
        ),
        "{d:?}"
    );
}

#[tokio::test]
async fn every_attempt_of_a_request_that_fell_back_is_taken_and_its_reservation_given_back_once() {
    let l = limiter().await;
    let o = org();
    let limits = Limits {
        tpm: Some(1_000),
        ..Limits::default()
    };
    let scopes = vec![scope(&o, "key", limits), scope(&o, "org", limits)];
    let buckets = sy_limits::token_buckets(&scopes);
    assert!(admitted(&l.admit(ask("r", 1_000), &scopes).await.unwrap()));
    let settle = |attempt_id, used| Settlement {
        org: &o,
        request_id: "r",
        attempt_id,
        buckets: &buckets,
        reserved: 1_000,
        used,
        budgets: &[],
        billed_nanos: 0,
        allowance: None,
    };
    // Events may come in any order and more than once.
    assert!(l.settle(settle("r-2", 300)).await.unwrap());
    assert!(l.settle(settle("r-1", 100)).await.unwrap());
    assert!(!l.settle(settle("r-2", 300)).await.unwrap());
    assert!(!l.settle(settle("r-1", 100)).await.unwrap());
    // 400 used of the minute's 1,000, in both scopes.
    assert!(!admitted(&l.admit(ask("big", 650), &scopes).await.unwrap()));
    assert!(admitted(&l.admit(ask("fits", 600), &scopes).await.unwrap()));
}

#[tokio::test]
async fn retry_after_says_when_the_next_request_is_admitted() {
    let l = limiter().await;
    let o = org();
    // 600 per minute: one every 100 ms once the burst is spent.
    let limits = Limits {
        rpm: Some(600),
        ..Limits::default()
    };
    let scopes = vec![scope(&o, "key", limits)];
    for i in 0..600 {
        assert!(admitted(
            &l.admit(ask(&format!("r{i}"), 0), &scopes).await.unwrap()
        ));
    }
    let d = l.admit(ask("next", 0), &scopes).await.unwrap();
    let Decision::Refused {
        retry_after_ms: Some(wait),
        ..
    } = d
    else {
        panic!("{d:?}");
    };
    assert!(wait <= 100, "{wait}");
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let mut tries = 0;
    while !admitted(&l.admit(ask("next", 0), &scopes).await.unwrap()) {
        tries += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Admitted at the time it said, give or take the clock's grain.
    assert!(tries <= 2, "{tries} retries after {:?}", started.elapsed());
}

fn budget(o: &str, kind: &str, usd_nanos: i64) -> sy_limits::Budget {
    sy_limits::Budget::of_org(o, kind, "b", usd_nanos, sy_limits::Period::Month)
}

fn spend<'a>(
    o: &'a str,
    budgets: &'a [sy_limits::Budget],
    out: u32,
    lower: u32,
) -> sy_limits::Spend<'a> {
    sy_limits::Spend {
        org: o,
        budgets,
        input_nanos: 100,
        output_token_nanos: 10.0,
        output_tokens: out,
        min_output_tokens: lower,
        hold_ms: 60_000,
        require_ready: false,
    }
}

#[tokio::test]
async fn budgets_reserve_the_largest_cost_then_settle_to_what_was_billed_once() {
    let l = limiter().await;
    let o = org();
    // $0.000002 = 2,000 nano-USD; a request may cost 100 + 10 × 50 = 600.
    let budgets = vec![budget(&o, "key", 2_000), budget(&o, "org", 1_000_000)];
    let admit = |id: &'static str| {
        let (l, o, b) = (l.clone(), o.clone(), budgets.clone());
        async move {
            l.admit_spend(ask(id, 0), &[], Some(&spend(&o, &b, 50, 0)))
                .await
                .unwrap()
        }
    };
    for id in ["a", "b", "c"] {
        let (d, room) = admit(id).await;
        assert!(admitted(&d), "{id}: {d:?}");
        assert_eq!(room.unwrap().output_tokens, 50);
    }
    // Admitted again under its id (a batch item sent again), "a" still
    // holds one reservation, not two.
    let (d, _) = admit("a").await;
    assert!(admitted(&d), "again: {d:?}");
    // 1,800 held: a fourth cannot be paid for, and says why.
    let (d, _) = admit("d").await;
    let Decision::OverBudget(over) = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        (
            over.budget,
            over.spent_nanos,
            over.held_nanos,
            over.limit_nanos
        ),
        (0, 0, 1_800, 2_000)
    );
    // A monthly budget starts again at the first of next month, 00:00 UTC.
    let resets = over.resets_unix_s.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(resets > now && resets <= now + 31 * 86_400, "{resets}");
    assert_eq!(resets % 86_400, 0);
    let text =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(resets))
            .to_string();
    assert!(text.ends_with("-01T00:00:00Z"), "{text}");
    // "a" cost 150: its 600 are given back and 150 spent, once.
    let keys: Vec<(String, u8)> = budgets
        .iter()
        .map(|b| (b.key.clone(), b.period.as_code()))
        .collect();
    let settle = |attempt_id| Settlement {
        org: &o,
        request_id: "a",
        attempt_id,
        buckets: &[],
        reserved: 0,
        used: 0,
        budgets: &keys,
        billed_nanos: 150,
        allowance: None,
    };
    assert!(l.settle(settle("a-1")).await.unwrap());
    assert!(!l.settle(settle("a-1")).await.unwrap());
    // 150 spent + 1,200 held: 650 left, one more fits.
    assert!(admitted(&admit("d").await.0));
    assert!(!admitted(&admit("e").await.0));
}

#[tokio::test]
async fn a_budget_that_cannot_pay_for_max_tokens_lowers_it_or_refuses() {
    let l = limiter().await;
    let o = org();
    let budgets = vec![budget(&o, "project", 1_000)];
    // Asks for 200 output tokens (2,100 nano-USD): only 90 can be paid for.
    let (d, room) = l
        .admit_spend(ask("r", 0), &[], Some(&spend(&o, &budgets, 200, 16)))
        .await
        .unwrap();
    assert!(admitted(&d), "{d:?}");
    let room = room.unwrap();
    assert_eq!(room.output_tokens, 90);
    assert_eq!(room.left_nanos, 0);
    // Nothing left: refused, lowering or not.
    let (d, _) = l
        .admit_spend(ask("s", 0), &[], Some(&spend(&o, &budgets, 200, 16)))
        .await
        .unwrap();
    assert!(matches!(d, Decision::OverBudget(_)), "{d:?}");
}

#[tokio::test]
async fn budgets_wait_for_their_org_to_be_restored_when_asked_to() {
    let l = limiter().await;
    let o = org();
    let budgets = vec![budget(&o, "key", 1_000_000)];
    let strict = sy_limits::Spend {
        require_ready: true,
        ..spend(&o, &budgets, 50, 0)
    };
    let (d, _) = l
        .admit_spend(ask("r", 0), &[], Some(&strict))
        .await
        .unwrap();
    assert_eq!(d, Decision::NotReady);
    l.mark_ready(&o).await.unwrap();
    assert!(admitted(
        &l.admit_spend(ask("r", 0), &[], Some(&strict))
            .await
            .unwrap()
            .0
    ));
}

#[tokio::test]
async fn a_reservation_never_settled_is_swept_when_it_lapses() {
    let l = limiter().await;
    let o = org();
    let budgets = vec![budget(&o, "key", 1_000)];
    let short = sy_limits::Spend {
        hold_ms: 200,
        ..spend(&o, &budgets, 50, 0)
    };
    assert!(admitted(
        &l.admit_spend(ask("lost", 0), &[], Some(&short))
            .await
            .unwrap()
            .0
    ));
    assert!(!admitted(
        &l.admit_spend(ask("next", 0), &[], Some(&short))
            .await
            .unwrap()
            .0
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The lost request's hold lapsed: the next admission sweeps it first.
    assert!(admitted(
        &l.admit_spend(ask("next", 0), &[], Some(&short))
            .await
            .unwrap()
            .0
    ));
}

/// What one admission of `id` against `scope` leaves of its requests.
async fn requests_left(l: &Limiter, scope: &Scope, id: &str) -> u32 {
    match l
        .admit(ask(id, 0), std::slice::from_ref(scope))
        .await
        .unwrap()
    {
        Decision::Admitted(rem) => rem[0].requests.unwrap(),
        other => panic!("refused: {other:?}"),
    }
}

#[tokio::test]
async fn an_abandoned_admission_never_hands_its_answer_to_the_next_and_a_flushed_script_is_sent_again()
 {
    let l = limiter().await;
    let o = org();
    let per_minute = |rpm| Limits {
        rpm: Some(rpm),
        ..Limits::default()
    };
    let hundred = scope(&o, "key", per_minute(100));
    let fifty = scope(&o, "project", per_minute(50));
    assert_eq!(requests_left(&l, &hundred, "a").await, 99);
    // Abandoned after it was sent (a client that went away): its connection
    // is dropped with it, so its late answer is read by no one.
    for i in 0..20 {
        let id = format!("gone-{i}");
        let call = l.admit(ask(&id, 0), std::slice::from_ref(&hundred));
        let _ = tokio::time::timeout(Duration::from_micros(1), call).await;
    }
    assert_eq!(requests_left(&l, &fifty, "b").await, 49);
    assert_eq!(requests_left(&l, &fifty, "c").await, 48);
    // After a SCRIPT FLUSH (or a Redis restart) the script is sent in full once.
    let client = redis::Client::open(sy_test_support::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert_eq!(requests_left(&l, &fifty, "d").await, 47);
    // And so it is for admissions that come together (all but the first go
    // on the shared connection).
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let together = (0..20).map(|i| {
        let (l, fifty) = (l.clone(), fifty.clone());
        async move { requests_left(&l, &fifty, &format!("t{i}")).await }
    });
    let mut left = futures::future::join_all(together).await;
    left.sort_unstable();
    assert_eq!(left, (27..47).collect::<Vec<u32>>());
}
