//! An org's invoice for a calendar month (issue 18), from what ClickHouse
//! summed over the month's usage rows and what the PostgreSQL ledger holds:
//! one line per project, model, price version, multiplier and batch-or-not;
//! subtotals per project and per model; the totals; the balance at the start
//! and the end of the month with every credit and adjustment between, and
//! the usage debits summed. Rendered as JSON or CSV, byte for byte the same
//! whenever it is made from the same rows: lines and entries are sorted,
//! money is fixed-point text, nothing says when it was made.
//!
//! Money is exact: nano-USD integers as the rows and the ledger keep them,
//! shown as USD with nine decimals. Nothing here is rounded.

use std::collections::BTreeMap;
use std::ops::AddAssign;

use serde::Serialize;

/// Tokens by class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tokens {
    /// Input not read from a cache.
    pub input: u64,
    /// Input read from the provider's prompt cache.
    pub cached_input: u64,
    /// Written to the cache for 5 minutes.
    pub cache_write_5m: u64,
    /// Written to the cache for an hour.
    pub cache_write_1h: u64,
    /// Output (reasoning included).
    pub output: u64,
    /// The reasoning part of the output.
    pub reasoning: u64,
}

impl AddAssign for Tokens {
    fn add_assign(&mut self, o: Tokens) {
        self.input += o.input;
        self.cached_input += o.cached_input;
        self.cache_write_5m += o.cache_write_5m;
        self.cache_write_1h += o.cache_write_1h;
        self.output += o.output;
        self.reasoning += o.reasoning;
    }
}

/// What some attempts used and cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Attempts (a request that fell back counts each attempt).
    pub attempts: u64,
    /// Attempts whose model had no price: in the tokens, not in the money.
    pub unpriced_attempts: u64,
    /// Tokens by class.
    pub tokens: Tokens,
    /// At provider prices, nano-USD.
    pub cost_nanos: i128,
    /// What the org was billed, nano-USD.
    pub billed_nanos: i128,
}

impl AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.attempts += o.attempts;
        self.unpriced_attempts += o.unpriced_attempts;
        self.tokens += o.tokens;
        self.cost_nanos += o.cost_nanos;
        self.billed_nanos += o.billed_nanos;
    }
}

/// One project's use of one model under one price version and multiplier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The project (a UUID; empty for rows without one).
    pub project_id: String,
    /// Its name now (empty when it is gone).
    pub project_name: String,
    /// The provider that served the attempts.
    pub provider: String,
    /// The provider's model.
    pub model: String,
    /// The price-table version they were priced under (0: the config file's).
    pub price_version: u32,
    /// Billed over cost, in billionths; none for rows from before multipliers
    /// were recorded.
    pub multiplier_ppb: Option<i64>,
    /// Whether they ran for a batch (billed at the batch price on top).
    pub batch: bool,
    /// Requests among them (a request that fell back to another model is
    /// counted on each of its lines).
    pub requests: u64,
    /// What they used and cost.
    pub usage: Usage,
}

/// A credit or an adjustment in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When it was written, UTC (`2026-11-14T10:22:31.123456Z`).
    pub time: String,
    /// `credit` or `adjustment`.
    pub kind: String,
    /// Nano-USD, negative for money taken back.
    pub amount_nanos: i64,
    /// Its reference (a top-up's is `<provider>:order:<order id>`).
    pub reference: String,
    /// Its note.
    pub note: String,
}

/// The org's ledger over the period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Before the period began, nano-USD.
    pub balance_start_nanos: i64,
    /// Credits and adjustments written in the period.
    pub entries: Vec<Entry>,
    /// Usage debits written in the period (one per billed attempt of a
    /// prepaid org).
    pub debits: u64,
    /// What they took, nano-USD (positive).
    pub debited_nanos: i64,
    /// When the period ended (or now, for the month in progress), nano-USD.
    pub balance_end_nanos: i64,
}

/// Whether the month is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The month (or the hour after it, while its last rows arrive) is not
    /// over: the figures are the month so far.
    Open,
    /// Over: the figures no longer change.
    Closed,
}

/// Whose invoice and for when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The org.
    pub org_id: String,
    /// Its name now.
    pub org_name: String,
    /// `YYYY-MM`.
    pub period: String,
    /// Its first instant, Unix seconds.
    pub start: u32,
    /// The next month's first instant, Unix seconds.
    pub end: u32,
    /// Open or closed.
    pub status: Status,
}

/// An org's invoice for a month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    header: Header,
    requests: u64,
    lines: Vec<Line>,
    ledger: Ledger,
}

impl Invoice {
    /// The invoice of `requests` distinct requests in `lines`, with the
    /// ledger over the same period; lines and entries are put in their
    /// order here (the input's does not matter).
    pub fn new(header: Header, requests: u64, mut lines: Vec<Line>, mut ledger: Ledger) -> Self {
        lines.sort_by(|a, b| line_key(a).cmp(&line_key(b)));
        ledger.entries.sort_by(|a, b| {
            (&a.time, &a.kind, &a.reference).cmp(&(&b.time, &b.kind, &b.reference))
        });
        Invoice {
            header,
            requests,
            lines,
            ledger,
        }
    }

    /// Its lines, in order.
    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// Its ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Every line's usage summed.
    pub fn totals(&self) -> Usage {
        let mut t = Usage::default();
        for l in &self.lines {
            t += l.usage;
        }
        t
    }

    /// Subtotals per project: (id, name, usage), by id.
    pub fn by_project(&self) -> Vec<(&str, &str, Usage)> {
        let mut m: BTreeMap<&str, (&str, Usage)> = BTreeMap::new();
        for l in &self.lines {
            let e = m
                .entry(&l.project_id)
                .or_insert((&l.project_name, Usage::default()));
            e.1 += l.usage;
        }
        m.into_iter().map(|(id, (name, u))| (id, name, u)).collect()
    }

    /// Subtotals per model: (provider, model, usage), by provider and model.
    pub fn by_model(&self) -> Vec<(&str, &str, Usage)> {
        let mut m: BTreeMap<(&str, &str), Usage> = BTreeMap::new();
        for l in &self.lines {
            *m.entry((&l.provider, &l.model)).or_default() += l.usage;
        }
        m.into_iter().map(|((p, model), u)| (p, model, u)).collect()
    }

    /// The credits and the adjustments in the period, summed apart.
    fn moved(&self) -> (i64, i64) {
        let sum = |kind: &str| {
            self.ledger
                .entries
                .iter()
                .filter(|e| e.kind == kind)
                .map(|e| e.amount_nanos)
                .sum::<i64>()
        };
        (sum("credit"), sum("adjustment"))
    }

    /// As pretty JSON with a final newline (schemas/admin-openapi.json,
    /// `Invoice`).
    pub fn to_json(&self) -> Vec<u8> {
        let h = &self.header;
        let (credits, adjustments) = self.moved();
        let l = &self.ledger;
        let doc = JsonInvoice {
            object: "invoice",
            org_id: &h.org_id,
            org_name: &h.org_name,
            period: &h.period,
            start: rfc3339(h.start),
            end: rfc3339(h.end),
            status: h.status,
            currency: "usd",
            lines: self
                .lines
                .iter()
                .map(|l| JsonLine {
                    project_id: &l.project_id,
                    project_name: &l.project_name,
                    provider: &l.provider,
                    model: &l.model,
                    price_version: l.price_version,
                    multiplier: l.multiplier_ppb.map(|m| fixed9(i128::from(m))),
                    batch: l.batch,
                    requests: l.requests,
                    usage: JsonUsage::of(&l.usage),
                })
                .collect(),
            projects: self
                .by_project()
                .into_iter()
                .map(|(project_id, project_name, u)| JsonProject {
                    project_id,
                    project_name,
                    usage: JsonUsage::of(&u),
                })
                .collect(),
            models: self
                .by_model()
                .into_iter()
                .map(|(provider, model, u)| JsonModel {
                    provider,
                    model,
                    usage: JsonUsage::of(&u),
                })
                .collect(),
            totals: JsonTotals {
                requests: self.requests,
                usage: JsonUsage::of(&self.totals()),
            },
            balance: JsonBalance {
                start_usd: fixed9(l.balance_start_nanos.into()),
                credits_usd: fixed9(credits.into()),
                adjustments_usd: fixed9(adjustments.into()),
                debits: l.debits,
                debited_usd: fixed9(l.debited_nanos.into()),
                end_usd: fixed9(l.balance_end_nanos.into()),
            },
            entries: l
                .entries
                .iter()
                .map(|e| JsonEntry {
                    time: &e.time,
                    kind: &e.kind,
                    amount_usd: fixed9(e.amount_nanos.into()),
                    reference: &e.reference,
                    note: &e.note,
                })
                .collect(),
        };
        // Strings, integers and nested structs only: serialising cannot fail.
        let mut out = serde_json::to_vec_pretty(&doc).expect("an invoice serialises");
        out.push(b'\n');
        out
    }

    /// As CSV (RFC 4180: a header row, CRLF line ends), one record per row
    /// with its kind in `record`: `line`, `project`, `model`, `total`,
    /// `balance_start`, `credit`, `adjustment`, `debits`, `balance_end`.
    /// Every record carries the org and the period, so invoices concatenate.
    /// A text cell starting with `=`, `+`, `-`, `@`, a tab or a CR gets a
    /// leading `'`, so a spreadsheet never runs a name as a formula.
    pub fn to_csv(&self) -> Vec<u8> {
        let h = &self.header;
        let mut out = String::new();
        push_record(&mut out, CSV_COLUMNS.iter().map(|c| Cell::Number(c)));
        let mut record = |kind: &'static str, cells: Row| {
            let mut all = vec![
                Cell::Text(&h.org_id),
                Cell::Number(&h.period),
                Cell::Number(kind),
            ];
            all.extend(cells.0);
            push_record(&mut out, all.into_iter());
        };
        let usage_cells = |u: &Usage| -> [String; 10] {
            [
                u.attempts.to_string(),
                u.unpriced_attempts.to_string(),
                u.tokens.input.to_string(),
                u.tokens.cached_input.to_string(),
                u.tokens.cache_write_5m.to_string(),
                u.tokens.cache_write_1h.to_string(),
                u.tokens.output.to_string(),
                u.tokens.reasoning.to_string(),
                fixed9(u.cost_nanos),
                fixed9(u.billed_nanos),
            ]
        };
        for l in &self.lines {
            let m = l
                .multiplier_ppb
                .map(|m| fixed9(m.into()))
                .unwrap_or_default();
            let (v, b, r) = (
                l.price_version.to_string(),
                u8::from(l.batch).to_string(),
                l.requests.to_string(),
            );
            let u = usage_cells(&l.usage);
            record(
                "line",
                Row::usage(
                    [&l.project_id, &l.project_name, &l.provider, &l.model],
                    [&v, &m, &b, &r],
                    &u,
                ),
            );
        }
        for (id, name, usage) in self.by_project() {
            let u = usage_cells(&usage);
            record(
                "project",
                Row::usage([id, name, "", ""], ["", "", "", ""], &u),
            );
        }
        for (provider, model, usage) in self.by_model() {
            let u = usage_cells(&usage);
            record(
                "model",
                Row::usage(["", "", provider, model], ["", "", "", ""], &u),
            );
        }
        let (r, u) = (self.requests.to_string(), usage_cells(&self.totals()));
        record("total", Row::usage(["", "", "", ""], ["", "", "", &r], &u));
        let l = &self.ledger;
        let start = fixed9(l.balance_start_nanos.into());
        record("balance_start", Row::money("", &start, "", ""));
        for e in &l.entries {
            let kind = if e.kind == "credit" {
                "credit"
            } else {
                "adjustment"
            };
            let amount = fixed9(e.amount_nanos.into());
            record(kind, Row::money(&e.time, &amount, &e.reference, &e.note));
        }
        let debited = fixed9(-i128::from(l.debited_nanos));
        let mut debits = Row::money("", &debited, "", "");
        debits.0[ATTEMPTS_CELL] = Cell::Owned(l.debits.to_string());
        record("debits", debits);
        let end = fixed9(l.balance_end_nanos.into());
        record("balance_end", Row::money("", &end, "", ""));
        out.into_bytes()
    }
}

fn line_key(l: &Line) -> (&str, &str, &str, u32, Option<i64>, bool) {
    (
        &l.project_id,
        &l.provider,
        &l.model,
        l.price_version,
        l.multiplier_ppb,
        l.batch,
    )
}

/// The CSV header.
pub const CSV_COLUMNS: [&str; 25] = [
    "org_id",
    "period",
    "record",
    "project_id",
    "project_name",
    "provider",
    "model",
    "price_version",
    "multiplier",
    "batch",
    "requests",
    "attempts",
    "unpriced_attempts",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "billed_usd",
    "time",
    "amount_usd",
    "reference",
    "note",
];

/// Where `attempts` is among the cells after `record`.
const ATTEMPTS_CELL: usize = 8;

enum Cell<'a> {
    /// Written as it is (numbers, fixed words): never a formula.
    Number(&'a str),
    /// An owned number.
    Owned(String),
    /// Anything a person typed: quoted as needed, defused.
    Text(&'a str),
}

/// The cells after `org_id`, `period` and `record`.
struct Row<'a>(Vec<Cell<'a>>);

impl<'a> Row<'a> {
    /// A usage record: project id and name, provider, model (text); price
    /// version, multiplier, batch, requests; the usage cells.
    fn usage(text: [&'a str; 4], numbers: [&'a str; 4], usage: &'a [String; 10]) -> Row<'a> {
        let mut cells: Vec<Cell<'a>> = text.into_iter().map(Cell::Text).collect();
        cells.extend(numbers.into_iter().map(Cell::Number));
        cells.extend(usage.iter().map(|s| Cell::Number(s)));
        cells.extend([
            Cell::Number(""),
            Cell::Number(""),
            Cell::Number(""),
            Cell::Number(""),
        ]);
        Row(cells)
    }

    /// A ledger record: time, amount, reference, note.
    fn money(time: &'a str, amount: &'a str, reference: &'a str, note: &'a str) -> Row<'a> {
        let mut cells: Vec<Cell<'a>> = (0..18).map(|_| Cell::Number("")).collect();
        cells.extend([
            Cell::Number(time),
            Cell::Number(amount),
            Cell::Text(reference),
            Cell::Text(note),
        ]);
        Row(cells)
    }
}

fn push_record<'a>(out: &mut String, cells: impl Iterator<Item = Cell<'a>>) {
    for (i, cell) in cells.enumerate() {
        if i > 0 {
            out.push(',');
        }
        match cell {
            Cell::Number(s) => out.push_str(s),
            Cell::Owned(s) => out.push_str(&s),
            Cell::Text(s) => push_text(out, s),
        }
    }
    out.push_str("\r\n");
}

fn push_text(out: &mut String, s: &str) {
    let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = formula || s.contains([',', '"', '\n', '\r']);
    if quote {
        out.push('"');
    }
    if formula {
        out.push('\'');
    }
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    if quote {
        out.push('"');
    }
}

/// Nano-units as a decimal with nine fractional digits (`-1.500000000`).
pub fn fixed9(nanos: i128) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    format!("{sign}{}.{:09}", n / 1_000_000_000, n % 1_000_000_000)
}

/// A decimal as ClickHouse prints one (`12.5`, `-0.000000001`,
/// `3.000000000`, `7`) in nano-units; none when it is not one or has more
/// than nine decimals.
pub fn nanos_of_decimal(text: &str) -> Option<i128> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty()
        || whole.len() > 27
        || frac.len() > 9
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i128 = whole.parse().ok()?;
    let frac: i128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    let n = whole.checked_mul(1_000_000_000)?.checked_add(frac)?;
    Some(if negative { -n } else { n })
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(unix: u32) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(unix));
    humantime::format_rfc3339_seconds(at).to_string()
}

#[derive(Serialize)]
struct JsonInvoice<'a> {
    object: &'static str,
    org_id: &'a str,
    org_name: &'a str,
    period: &'a str,
    start: String,
    end: String,
    status: Status,
    currency: &'static str,
    lines: Vec<JsonLine<'a>>,
    projects: Vec<JsonProject<'a>>,
    models: Vec<JsonModel<'a>>,
    totals: JsonTotals,
    balance: JsonBalance,
    entries: Vec<JsonEntry<'a>>,
}

#[derive(Serialize)]
struct JsonUsage {
    attempts: u64,
    unpriced_attempts: u64,
    tokens: Tokens,
    cost_usd: String,
    billed_usd: String,
}

impl JsonUsage {
    fn of(u: &Usage) -> Self {
        JsonUsage {
            attempts: u.attempts,
            unpriced_attempts: u.unpriced_attempts,
            tokens: u.tokens,
            cost_usd: fixed9(u.cost_nanos),
            billed_usd: fixed9(u.billed_nanos),
        }
    }
}

#[derive(Serialize)]
struct JsonLine<'a> {
    project_id: &'a str,
    project_name: &'a str,
    provider: &'a str,
    model: &'a str,
    price_version: u32,
    multiplier: Option<String>,
    batch: bool,
    requests: u64,
    #[serde(flatten)]
    usage: JsonUsage,
}

#[derive(Serialize)]
struct JsonProject<'a> {
    project_id: &'a str,
    project_name: &'a str,
    #[serde(flatten)]
    usage: JsonUsage,
}

#[derive(Serialize)]
struct JsonModel<'a> {
    provider: &'a str,
    model: &'a str,
    #[serde(flatten)]
    usage: JsonUsage,
}

#[derive(Serialize)]
struct JsonTotals {
    requests: u64,
    #[serde(flatten)]
    usage: JsonUsage,
}

#[derive(Serialize)]
struct JsonBalance {
    start_usd: String,
    credits_usd: String,
    adjustments_usd: String,
    debits: u64,
    debited_usd: String,
    end_usd: String,
}

#[derive(Serialize)]
struct JsonEntry<'a> {
    time: &'a str,
    kind: &'a str,
    amount_usd: String,
    reference: &'a str,
    note: &'a str,
}

#[cfg(test)]
mod tests;
