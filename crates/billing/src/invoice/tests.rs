//! The invoice's order, figures and CSV, without a database.

use super::*;

fn usage(attempts: u64, input: u64, cost: i128, billed: i128) -> Usage {
    Usage {
        attempts,
        unpriced_attempts: 0,
        tokens: Tokens {
            input,
            output: 2 * input,
            ..Tokens::default()
        },
        cost_nanos: cost,
        billed_nanos: billed,
    }
}

fn line(project: &str, model: &str, version: u32, u: Usage) -> Line {
    Line {
        project_id: project.into(),
        project_name: format!("name of {project}"),
        provider: "openai".into(),
        model: model.into(),
        price_version: version,
        multiplier_ppb: Some(1_500_000_000),
        batch: false,
        requests: u.attempts,
        usage: u,
    }
}

fn invoice(lines: Vec<Line>, entries: Vec<Entry>) -> Invoice {
    let header = Header {
        org_id: "org".into(),
        org_name: "Acme".into(),
        period: "2026-11".into(),
        start: 1_793_491_200,
        end: 1_796_083_200,
        status: Status::Closed,
    };
    let ledger = Ledger {
        balance_start_nanos: 5_000_000_000,
        entries,
        debits: 3,
        debited_nanos: 750,
        balance_end_nanos: 5_000_000_000 + 10_000_000_000 - 750,
    };
    Invoice::new(header, 3, lines, ledger)
}

fn entry(time: &str, kind: &str, amount: i64, note: &str) -> Entry {
    Entry {
        time: time.into(),
        kind: kind.into(),
        amount_nanos: amount,
        reference: format!("ref-{time}"),
        note: note.into(),
    }
}

#[test]
fn lines_and_entries_come_out_in_one_order_whatever_order_they_came_in() {
    let a = line("p1", "gpt-4o", 1, usage(1, 10, 100, 150));
    let b = line("p1", "gpt-4o-mini", 2, usage(1, 20, 200, 300));
    let c = line("p2", "gpt-4o", 1, usage(1, 30, 300, 450));
    let e1 = entry("2026-11-03T00:00:00.000000Z", "credit", 10_000_000_000, "x");
    let e2 = entry("2026-11-09T00:00:00.000000Z", "adjustment", -1, "y");
    let one = invoice(
        vec![a.clone(), b.clone(), c.clone()],
        vec![e1.clone(), e2.clone()],
    );
    let two = invoice(vec![c, a, b], vec![e2, e1]);
    assert_eq!(one.to_json(), two.to_json());
    assert_eq!(one.to_csv(), two.to_csv());
    let t = one.totals();
    assert_eq!((t.attempts, t.tokens.input, t.tokens.output), (3, 60, 120));
    assert_eq!((t.cost_nanos, t.billed_nanos), (600, 900));
    let projects = one.by_project();
    assert_eq!(projects.len(), 2);
    assert_eq!((projects[0].0, projects[0].2.billed_nanos), ("p1", 450));
    let models = one.by_model();
    assert_eq!((models[0].1, models[0].2.cost_nanos), ("gpt-4o", 400));
}

#[test]
fn json_carries_lines_subtotals_totals_and_the_balance_exactly() {
    let inv = invoice(
        vec![line("p1", "gpt-4o", 1, usage(2, 10, 1, 2))],
        vec![entry(
            "2026-11-03T10:00:00.000001Z",
            "credit",
            10_000_000_000,
            "top-up",
        )],
    );
    let v: serde_json::Value = serde_json::from_slice(&inv.to_json()).unwrap();
    assert_eq!(v["start"], "2026-11-01T00:00:00Z");
    assert_eq!(v["end"], "2026-12-01T00:00:00Z");
    assert_eq!(v["status"], "closed");
    assert_eq!(v["lines"][0]["multiplier"], "1.500000000");
    assert_eq!(v["lines"][0]["tokens"]["output"], 20);
    assert_eq!(v["lines"][0]["cost_usd"], "0.000000001");
    assert_eq!(v["totals"]["requests"], 3);
    assert_eq!(v["totals"]["billed_usd"], "0.000000002");
    assert_eq!(v["projects"][0]["project_name"], "name of p1");
    assert_eq!(v["balance"]["start_usd"], "5.000000000");
    assert_eq!(v["balance"]["credits_usd"], "10.000000000");
    assert_eq!(v["balance"]["debited_usd"], "0.000000750");
    assert_eq!(v["balance"]["end_usd"], "14.999999250");
    assert_eq!(v["entries"][0]["time"], "2026-11-03T10:00:00.000001Z");
    assert!(inv.to_json().ends_with(b"}\n"));
}

#[test]
fn csv_is_rectangular_quoted_and_never_a_formula() {
    let mut l = line("p1", "gpt-4o", 1, usage(1, 10, 1, 2));
    l.project_name = "=HYPERLINK(\"http://evil\",\"x\"), ok".into();
    let inv = invoice(
        vec![l],
        vec![entry("2026-11-03T10:00:00.000001Z", "credit", 5, "-2+3")],
    );
    let csv = String::from_utf8(inv.to_csv()).unwrap();
    assert!(csv.ends_with("\r\n"));
    let rows: Vec<&str> = csv.split("\r\n").filter(|r| !r.is_empty()).collect();
    assert_eq!(rows[0], CSV_COLUMNS.join(","));
    // header, line, project, model, total, balance_start, credit, debits, balance_end
    assert_eq!(rows.len(), 9, "{csv}");
    assert!(
        rows[1].contains(",\"'=HYPERLINK(\"\"http://evil\"\",\"\"x\"\"), ok\","),
        "{}",
        rows[1]
    );
    assert!(rows[6].ends_with(",0.000000005,ref-2026-11-03T10:00:00.000001Z,\"'-2+3\""));
    assert!(rows[7].starts_with("org,2026-11,debits,"), "{}", rows[7]);
    assert!(rows[7].contains(",-0.000000750,"), "{}", rows[7]);
    assert!(rows[8].contains(",14.999999250,"), "{}", rows[8]);
    // Every record has every column (quoted commas do not count).
    for row in &rows {
        let mut cells = 1;
        let mut quoted = false;
        for c in row.chars() {
            match c {
                '"' => quoted = !quoted,
                ',' if !quoted => cells += 1,
                _ => {}
            }
        }
        assert_eq!(cells, CSV_COLUMNS.len(), "{row}");
    }
}

#[test]
fn decimals_read_and_print_exactly() {
    for (text, nanos) in [
        ("12.5", 12_500_000_000),
        ("3.000000000", 3_000_000_000),
        ("7", 7_000_000_000),
        ("-0.000000001", -1),
        ("0", 0),
    ] {
        assert_eq!(nanos_of_decimal(text), Some(nanos), "{text}");
    }
    for bad in ["", ".5", "1.0000000001", "1e3", "--1", "1.2.3", "x"] {
        assert_eq!(nanos_of_decimal(bad), None, "{bad}");
    }
    assert_eq!(fixed9(-1_500_000_000), "-1.500000000");
    assert_eq!(fixed9(7), "0.000000007");
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_796_083_199), "2026-11-30T23:59:59Z");
    assert_eq!(rfc3339(1_709_164_800), "2024-02-29T00:00:00Z");
}
