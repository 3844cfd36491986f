//! An org's monthly invoice against a real PostgreSQL and a real ClickHouse:
//! usage rows of November 2026 (and some just outside it, or another org's)
//! and ledger rows dated before, in and after it; the invoice holds exactly
//! the month's, its totals equal ClickHouse's own sums and the ledger's, it
//! comes out byte for byte the same every time, and a top-up in the middle of
//! the month is on it with its time.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use serde_json::Value;
use sy_accounting::RequestRow;
use sy_control::invoices::{InvoiceError, SETTLE_SECS, invoice};
use uuid::Uuid;

/// 2026-11-01T00:00:00Z and 2026-12-01T00:00:00Z.
const NOV: u32 = 1_793_491_200;
const DEC: u32 = 1_796_083_200;

async fn insert(c: &sy_config::ClickhouseConfig, rows: &[RequestRow]) {
    let client = sy_accounting::client(c).with_database(&c.database);
    let mut insert = client.insert::<RequestRow>("requests").await.unwrap();
    for r in rows {
        insert.write(r).await.unwrap();
    }
    insert.end().await.unwrap();
}

struct Attempt<'a> {
    ts: u32,
    request: Uuid,
    attempt: u32,
    project: &'a str,
    provider: &'a str,
    model: &'a str,
    version: u32,
    multiplier: Option<i64>,
    batch: bool,
    tokens: [u64; 6],
    money: Option<(i64, i64)>,
}

fn row(org: &str, a: Attempt<'_>) -> RequestRow {
    let [
        input,
        cached,
        cache_write,
        cache_write_1h,
        output,
        reasoning,
    ] = a.tokens;
    RequestRow {
        ts: a.ts,
        event_id: format!("{}-{}", a.request, a.attempt),
        request_id: a.request,
        attempt: a.attempt,
        received_ms: u64::from(a.ts) * 1000,
        dispatched_ms: u64::from(a.ts) * 1000,
        finished_ms: u64::from(a.ts) * 1000 + 5,
        key_id: "k".into(),
        org_id: org.into(),
        project_id: a.project.into(),
        api: "chat".into(),
        model: a.model.into(),
        provider: a.provider.into(),
        upstream_model: a.model.into(),
        status: "ok".into(),
        input_tokens: input,
        cached_input_tokens: cached,
        cache_write_tokens: cache_write,
        cache_write_1h_tokens: cache_write_1h,
        output_tokens: output,
        reasoning_tokens: reasoning,
        cost: a.money.map(|m| m.0),
        billed: a.money.map(|m| m.1),
        batch_id: if a.batch {
            "batch_1".into()
        } else {
            String::new()
        },
        price_version: a.version,
        multiplier: a.multiplier,
        ..RequestRow::default()
    }
}

/// An attempt of `request` in `project` on `target` (provider, model, price
/// version, multiplier), priced at zero, without tokens.
fn attempt<'a>(
    ts: u32,
    request: Uuid,
    attempt: u32,
    project: &'a str,
    target: (&'a str, &'a str, u32, Option<i64>),
) -> Attempt<'a> {
    let (provider, model, version, multiplier) = target;
    Attempt {
        ts,
        request,
        attempt,
        project,
        provider,
        model,
        version,
        multiplier,
        batch: false,
        tokens: [0; 6],
        money: Some((0, 0)),
    }
}

/// Dates a ledger row (tests only: the ledger never changes a row).
async fn dated(store: &sy_control::store::Store, reference: &str, at: &str) {
    let done = sqlx::query("UPDATE ledger SET created_at = $2::timestamptz WHERE ref = $1")
        .bind(reference)
        .bind(at)
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1, "{reference}");
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct Sums {
    requests: u64,
    attempts: u64,
    input: u64,
    cached: u64,
    cache_write: u64,
    output: u64,
    cost: String,
    billed: String,
}

fn nanos(decimal: &str) -> i128 {
    sy_billing::invoice::nanos_of_decimal(decimal).unwrap()
}

#[tokio::test]
async fn a_months_invoice_is_its_rows_and_its_ledger_exactly_and_the_same_every_time() {
    let store = common::store().await;
    let ch = common::clickhouse().await;
    let actor = common::actor();
    let org = store.create_org(&actor, "Acme").await.unwrap();
    let other = store.create_org(&actor, "Other").await.unwrap();
    let web = store.create_project(&actor, org, "web").await.unwrap();
    let batch = store
        .create_project(&actor, org, "=batch jobs")
        .await
        .unwrap();
    let (o, web_s, batch_s) = (org.to_string(), web.to_string(), batch.to_string());

    let (r1, r2, r3, r4, r5, r6) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let rows = vec![
        // web, gpt-4o-mini under version 1 at ×1.5: two requests and the
        // first, failed attempt of a third.
        Attempt {
            tokens: [1000, 200, 0, 0, 500, 0],
            money: Some((1_000_000, 1_500_000)),
            ..attempt(
                NOV,
                r1,
                0,
                &web_s,
                ("openai", "gpt-4o-mini", 1, Some(1_500_000_000)),
            )
        },
        Attempt {
            tokens: [2000, 0, 0, 0, 100, 40],
            money: Some((3_000_001, 4_500_001)),
            ..attempt(
                NOV + 864_000,
                r2,
                0,
                &web_s,
                ("openai", "gpt-4o-mini", 1, Some(1_500_000_000)),
            )
        },
        attempt(
            NOV + 900_000,
            r3,
            0,
            &web_s,
            ("openai", "gpt-4o-mini", 1, Some(1_500_000_000)),
        ),
        // ... whose second attempt fell back to Anthropic, priced under version 2 at ×2.
        Attempt {
            tokens: [10, 0, 300, 100, 20, 0],
            money: Some((7_000, 14_000)),
            ..attempt(
                NOV + 900_001,
                r3,
                1,
                &web_s,
                ("anthropic", "claude-sonnet-4", 2, Some(2_000_000_000)),
            )
        },
        // The batch project: a row from before multipliers were recorded,
        // a batch row (billed at half price on top of ×1), an unpriced one.
        Attempt {
            tokens: [5, 0, 0, 0, 5, 0],
            money: Some((10, 10)),
            ..attempt(
                NOV + 1_000_000,
                r4,
                0,
                &batch_s,
                ("openai", "gpt-4o-mini", 1, None),
            )
        },
        Attempt {
            batch: true,
            tokens: [50, 0, 0, 0, 50, 0],
            money: Some((100, 50)),
            ..attempt(
                NOV + 1_100_000,
                r5,
                0,
                &batch_s,
                ("openai", "gpt-4o-mini", 1, Some(1_000_000_000)),
            )
        },
        Attempt {
            tokens: [10, 0, 0, 0, 1, 0],
            money: None,
            ..attempt(DEC - 1, r6, 0, &batch_s, ("vllm", "llama-3", 0, None))
        },
    ];
    let mut all: Vec<RequestRow> = rows.into_iter().map(|a| row(&o, a)).collect();
    // Not November's or not this org's.
    let outside = |ts, org: &str| {
        row(
            org,
            Attempt {
                tokens: [999, 0, 0, 0, 999, 0],
                money: Some((999, 999)),
                ..attempt(
                    ts,
                    Uuid::new_v4(),
                    0,
                    &web_s,
                    ("openai", "gpt-4o-mini", 1, Some(1)),
                )
            },
        )
    };
    all.push(outside(NOV - 1, &o));
    all.push(outside(DEC, &o));
    all.push(outside(NOV + 5, &other.to_string()));
    insert(&ch, &all).await;
    // r2's event delivered twice: stored twice, counted once (FINAL).
    insert(&ch, &all[1..2]).await;

    // The ledger: $20 in October; in November a $10 top-up, a $2.50
    // adjustment down and two usage debits; $5 in December.
    let credit = |usd: i64, reference: &'static str, note: &'static str| {
        let (store, actor) = (store.clone(), actor.clone());
        async move {
            store
                .credit(&actor, org, usd, reference, note)
                .await
                .unwrap();
        }
    };
    credit(20_000_000_000, "oct", "opening").await;
    dated(&store, "oct", "2026-10-15T08:00:00Z").await;
    credit(
        10_000_000_000,
        "stripe:order:ord_1",
        "top-up 1000 usd (pi_1)",
    )
    .await;
    dated(&store, "stripe:order:ord_1", "2026-11-14T10:22:31.123456Z").await;
    credit(-2_500_000_000, "adj", "-goodwill, reversed").await;
    dated(&store, "adj", "2026-11-20T00:00:00Z").await;
    assert!(store.debit(org, "ev-1", 1_500_000).await.unwrap());
    dated(&store, "ev-1", "2026-11-02T00:00:00Z").await;
    assert!(store.debit(org, "ev-2", 4_500_001).await.unwrap());
    dated(&store, "ev-2", "2026-11-30T23:59:59.999999Z").await;
    credit(5_000_000_000, "dec", "later").await;
    dated(&store, "dec", "2026-12-01T00:00:00Z").await;

    let closed = DEC + SETTLE_SECS;
    let inv = invoice(&store, &ch, org, "2026-11", closed).await.unwrap();
    let v: Value = serde_json::from_slice(&inv.to_json()).unwrap();
    assert_eq!(v["status"], "closed");
    assert_eq!(v["org_name"], "Acme");
    assert_eq!(
        (v["start"].as_str(), v["end"].as_str()),
        (Some("2026-11-01T00:00:00Z"), Some("2026-12-01T00:00:00Z"))
    );

    // Lines: web × (gpt-4o-mini v1 ×1.5, claude v2 ×2); batch project ×
    // (gpt-4o-mini v1 without a multiplier, the batch line at ×1, llama).
    let lines = v["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 5, "{v:#}");
    let line = |project: &str, model: &str, batch: bool, multiplier: Value| {
        lines
            .iter()
            .find(|l| {
                l["project_id"] == project
                    && l["model"] == model
                    && l["batch"] == batch
                    && l["multiplier"] == multiplier
            })
            .unwrap_or_else(|| panic!("{project} {model} {batch}: {v:#}"))
    };
    let mini = line(&web_s, "gpt-4o-mini", false, "1.500000000".into());
    assert_eq!(
        (mini["requests"].as_u64(), mini["attempts"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(mini["project_name"], "web");
    assert_eq!(mini["tokens"]["input"], 3000);
    assert_eq!(mini["tokens"]["cached_input"], 200);
    assert_eq!(mini["tokens"]["reasoning"], 40);
    assert_eq!(mini["cost_usd"], "0.004000001");
    assert_eq!(mini["billed_usd"], "0.006000001");
    let claude = line(&web_s, "claude-sonnet-4", false, "2.000000000".into());
    assert_eq!(
        (
            claude["provider"].as_str(),
            claude["price_version"].as_u64()
        ),
        (Some("anthropic"), Some(2))
    );
    assert_eq!(
        (
            claude["tokens"]["cache_write_5m"].as_u64(),
            claude["tokens"]["cache_write_1h"].as_u64()
        ),
        (Some(200), Some(100))
    );
    assert_eq!(
        line(&batch_s, "gpt-4o-mini", false, Value::Null)["billed_usd"],
        "0.000000010"
    );
    assert_eq!(
        line(&batch_s, "gpt-4o-mini", true, "1.000000000".into())["billed_usd"],
        "0.000000050"
    );
    let llama = line(&batch_s, "llama-3", false, Value::Null);
    assert_eq!(
        (
            llama["unpriced_attempts"].as_u64(),
            llama["cost_usd"].as_str()
        ),
        (Some(1), Some("0.000000000"))
    );

    // Totals equal ClickHouse's own sums over the month's rows.
    let sums: Sums = sy_accounting::client(&ch)
        .query(&format!(
            "SELECT uniqExact(request_id) AS requests, count() AS attempts, \
             sum(input_tokens) AS input, sum(cached_input_tokens) AS cached, \
             sum(cache_write_tokens) AS cache_write, sum(output_tokens) AS output, \
             toString(sum(ifNull(cost, toDecimal64(0, 9)))) AS total_cost, \
             toString(sum(ifNull(billed, toDecimal64(0, 9)))) AS total_billed \
             FROM {}.requests FINAL WHERE org_id = ? AND ts >= toDateTime(?) AND ts < toDateTime(?)",
            ch.database
        ))
        .bind(&o)
        .bind(NOV)
        .bind(DEC)
        .fetch_one()
        .await
        .unwrap();
    let t = inv.totals();
    assert_eq!(v["totals"]["requests"].as_u64(), Some(sums.requests));
    assert_eq!(sums.requests, 6);
    assert_eq!(t.attempts, sums.attempts);
    assert_eq!(t.tokens.input, sums.input);
    assert_eq!(t.tokens.cached_input, sums.cached);
    assert_eq!(
        t.tokens.cache_write_5m + t.tokens.cache_write_1h,
        sums.cache_write
    );
    assert_eq!(t.tokens.output, sums.output);
    assert_eq!(
        (t.cost_nanos, t.billed_nanos),
        (nanos(&sums.cost), nanos(&sums.billed))
    );
    assert_eq!(t.billed_nanos, 1_500_000 + 4_500_001 + 14_000 + 10 + 50);
    assert_eq!(
        nanos(v["totals"]["billed_usd"].as_str().unwrap()),
        t.billed_nanos
    );
    // The per-project subtotals add up to the totals too.
    let projects: i128 = v["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| nanos(p["billed_usd"].as_str().unwrap()))
        .sum();
    assert_eq!(projects, t.billed_nanos);

    // The ledger: the balance at the start, the month's moves, the end.
    let b = &v["balance"];
    assert_eq!(b["start_usd"], "20.000000000");
    assert_eq!(b["credits_usd"], "10.000000000");
    assert_eq!(b["adjustments_usd"], "-2.500000000");
    assert_eq!(
        (b["debits"].as_u64(), b["debited_usd"].as_str()),
        (Some(2), Some("0.006000001"))
    );
    assert_eq!(b["end_usd"], "27.493999999");
    let (in_month,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(SUM(amount_nanos), 0)::bigint FROM ledger WHERE org_id = $1 \
         AND created_at >= '2026-11-01T00:00:00Z' AND created_at < '2026-12-01T00:00:00Z'",
    )
    .bind(org)
    .fetch_one(store.pool())
    .await
    .unwrap();
    let l = inv.ledger();
    assert_eq!(l.balance_end_nanos - l.balance_start_nanos, in_month);
    let moved: i64 = l.entries.iter().map(|e| e.amount_nanos).sum();
    assert_eq!(
        l.balance_start_nanos + moved - l.debited_nanos,
        l.balance_end_nanos
    );
    // The mid-month top-up, with its time.
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{v:#}");
    assert_eq!(entries[0]["time"], "2026-11-14T10:22:31.123456Z");
    assert_eq!(entries[0]["reference"], "stripe:order:ord_1");
    assert_eq!(
        (
            entries[1]["kind"].as_str(),
            entries[1]["amount_usd"].as_str()
        ),
        (Some("adjustment"), Some("-2.500000000"))
    );
    // The stored balance is still its ledger's sum.
    assert_eq!(common::balance(&store, org).await, 32_493_999_999);

    // Byte for byte the same, made again from scratch.
    let again = invoice(&store, &ch, org, "2026-11", closed + 86_400)
        .await
        .unwrap();
    assert_eq!(inv.to_json(), again.to_json());
    assert_eq!(inv.to_csv(), again.to_csv());
    let csv = String::from_utf8(inv.to_csv()).unwrap();
    assert!(csv.contains(",credit,"), "{csv}");
    assert!(csv.contains(",2026-11-14T10:22:31.123456Z,10.000000000,stripe:order:ord_1,top-up 1000 usd (pi_1)\r\n"), "{csv}");
    assert!(
        csv.contains(",\"'=batch jobs\","),
        "a name is never a formula: {csv}"
    );
    assert!(csv.contains(",\"'-goodwill, reversed\"\r\n"), "{csv}");

    // The month in its last hour of settling is open; a month not begun, or
    // not a month, is refused; another org's rows are its own.
    let open = invoice(&store, &ch, org, "2026-11", DEC + 10)
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&open.to_json()).unwrap()["status"],
        "open"
    );
    assert!(matches!(
        invoice(&store, &ch, org, "2026-12", NOV + 5).await,
        Err(InvoiceError::NotBegun(_))
    ));
    for bad in ["2026-13", "2026-1", "november", "2026-11-01"] {
        assert!(
            matches!(
                invoice(&store, &ch, org, bad, closed).await,
                Err(InvoiceError::BadPeriod(_))
            ),
            "{bad}"
        );
    }
    let theirs = invoice(&store, &ch, other, "2026-11", closed)
        .await
        .unwrap();
    assert_eq!(theirs.totals().billed_nanos, 999);
    assert!(matches!(
        invoice(&store, &ch, Uuid::new_v4(), "2026-11", closed).await,
        Err(InvoiceError::Store(
            sy_control::store::StoreError::NotFound("org")
        ))
    ));
}
