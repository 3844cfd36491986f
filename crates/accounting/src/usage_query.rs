//! Usage and cost from the `requests` table, grouped: `GET /v1/usage` (a
//! key's own) and `GET /admin/v1/usage` (any org's, project's or key's).

use serde::{Deserialize, Serialize};
use sy_config::ClickhouseConfig;

use crate::{AccountingError, client};

/// How to group usage. Written as the query names it: `model`, `day`,
/// `org`, `project`, `key`, or `tag:<key>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum GroupBy {
    /// By the model the client asked for.
    Model,
    /// By UTC day.
    Day,
    /// By org (admin API).
    Org,
    /// By project (admin API).
    Project,
    /// By API key (admin API).
    Key,
    /// By the value of one tag (`tag:feature`; rows without it: `""`).
    Tag(String),
}

impl From<GroupBy> for String {
    fn from(g: GroupBy) -> String {
        match g {
            GroupBy::Model => "model".into(),
            GroupBy::Day => "day".into(),
            GroupBy::Org => "org".into(),
            GroupBy::Project => "project".into(),
            GroupBy::Key => "key".into(),
            GroupBy::Tag(k) => format!("tag:{k}"),
        }
    }
}

impl TryFrom<String> for GroupBy {
    type Error = String;
    fn try_from(s: String) -> Result<GroupBy, String> {
        GroupBy::parse(&s).ok_or_else(|| format!("unknown grouping '{s}'"))
    }
}

impl GroupBy {
    /// The grouping a query names (`model`, `day`, `org`, `project`, `key`,
    /// `tag:<key>` with a tag key of 1 to 64 of `A-Z a-z 0-9 _ - . :`).
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "model" => GroupBy::Model,
            "day" => GroupBy::Day,
            "org" => GroupBy::Org,
            "project" => GroupBy::Project,
            "key" => GroupBy::Key,
            _ => {
                let key = s.strip_prefix("tag:")?;
                return sy_protocol::tag::valid_key(key).then(|| GroupBy::Tag(key.to_owned()));
            }
        })
    }
}

/// Whose usage: every filter given must match (none given: everyone's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageScope<'a> {
    /// Only this org's rows.
    pub org_id: Option<&'a str>,
    /// Only this project's rows.
    pub project_id: Option<&'a str>,
    /// Only this key's rows.
    pub key_id: Option<&'a str>,
}

/// One group's usage; money as exact decimal strings in USD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct UsageGroup {
    /// The model, or the day (`YYYY-MM-DD`).
    pub group: String,
    /// Requests (attempts of one request count once).
    pub requests: u64,
    /// Attempts, fallbacks included.
    pub attempts: u64,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Cached input tokens.
    pub cached_input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost at provider prices, USD (priced attempts only).
    pub cost: String,
    /// Billed, USD (priced attempts only).
    pub billed: String,
    /// Attempts whose model has no price in the config.
    pub unpriced_attempts: u64,
}

/// `key_id`'s usage with `start <= ts < end` (Unix seconds), grouped.
pub async fn usage_for_key(
    config: &ClickhouseConfig,
    key_id: &str,
    start: u32,
    end: u32,
    group_by: GroupBy,
) -> Result<Vec<UsageGroup>, AccountingError> {
    let scope = UsageScope {
        key_id: Some(key_id),
        ..UsageScope::default()
    };
    usage(config, scope, start, end, group_by).await
}

/// The usage `scope` covers with `start <= ts < end` (Unix seconds), grouped.
pub async fn usage(
    config: &ClickhouseConfig,
    scope: UsageScope<'_>,
    start: u32,
    end: u32,
    group_by: GroupBy,
) -> Result<Vec<UsageGroup>, AccountingError> {
    let group = match &group_by {
        GroupBy::Model => "model",
        GroupBy::Day => "toString(toDate(ts))",
        GroupBy::Org => "org_id",
        GroupBy::Project => "project_id",
        GroupBy::Key => "key_id",
        // The tag's value, '' for rows without it (the key is bound).
        GroupBy::Tag(_) => "tag_values[indexOf(tag_keys, ?)]",
    };
    let sql = format!(
        "SELECT {group} AS g, uniqExact(request_id) AS requests, count() AS attempts, \
         sum(input_tokens) AS input_sum, sum(cached_input_tokens) AS cached_sum, \
         sum(output_tokens) AS output_sum, \
         toString(sum(ifNull(cost, toDecimal64(0, 9)))) AS cost_total, \
         toString(sum(ifNull(billed, toDecimal64(0, 9)))) AS billed_total, \
         sum(isNull(cost)) AS unpriced \
         FROM {db}.requests FINAL \
         WHERE (? = 0 OR org_id = ?) AND (? = 0 OR project_id = ?) AND (? = 0 OR key_id = ?) \
         AND ts >= toDateTime(?) AND ts < toDateTime(?) \
         GROUP BY g ORDER BY g",
        db = config.database
    );
    let filter = |f: Option<&str>| (u8::from(f.is_some()), f.unwrap_or_default().to_owned());
    let (org_on, org) = filter(scope.org_id);
    let (project_on, project) = filter(scope.project_id);
    let (key_on, key) = filter(scope.key_id);
    let mut query = client(config).query(&sql);
    if let GroupBy::Tag(tag) = &group_by {
        query = query.bind(tag.as_str());
    }
    Ok(query
        .bind(org_on)
        .bind(org)
        .bind(project_on)
        .bind(project)
        .bind(key_on)
        .bind(key)
        .bind(start)
        .bind(end)
        .fetch_all::<UsageGroup>()
        .await?)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` (UTC midnight) or Unix seconds.
pub fn parse_instant(text: &str) -> Option<u32> {
    if let Ok(secs) = text.parse::<u32>() {
        return Some(secs);
    }
    let mut parts = text.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let days_in_month = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if !(1970..=2105).contains(&y) || !(1..=days_in_month).contains(&d) {
        return None;
    }
    u32::try_from(days_from_civil(y, m, d) * 86_400).ok()
}

/// `YYYY-MM` as the Unix seconds of its first day and of the next month's
/// (UTC); none unless a month from 1970-01 to 2105-11.
pub fn month_bounds(period: &str) -> Option<(u32, u32)> {
    let (y, m) = period.split_once('-')?;
    if period.len() != 7 || y.len() != 4 || m.len() != 2 {
        return None;
    }
    if !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m): (u32, u32) = (y.parse().ok()?, m.parse().ok()?);
    if !(1..=12).contains(&m) {
        return None;
    }
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    Some((
        parse_instant(&format!("{y:04}-{m:02}-01"))?,
        parse_instant(&format!("{ny:04}-{nm:02}-01"))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_is_its_first_second_to_the_next_months() {
        assert_eq!(
            month_bounds("2026-12"),
            Some((1_796_083_200, 1_798_761_600))
        );
        assert_eq!(
            month_bounds("2024-02").map(|(s, e)| (e - s) / 86_400),
            Some(29)
        );
        for bad in [
            "2026-13", "2026-00", "26-01", "2026-1", "2026-011", "x", "1969-12", "+026-01",
        ] {
            assert_eq!(month_bounds(bad), None, "{bad}");
        }
    }

    #[test]
    fn instants_parse_dates_and_seconds() {
        assert_eq!(parse_instant("1970-01-01"), Some(0));
        assert_eq!(parse_instant("2026-11-23"), Some(1_795_392_000));
        assert_eq!(parse_instant("2024-02-29"), Some(1_709_164_800));
        assert_eq!(parse_instant("1795392000"), Some(1_795_392_000));
        for bad in [
            "2023-02-29",
            "2026-13-01",
            "2026-1-1",
            "yesterday",
            "",
            "-5",
        ] {
            assert_eq!(parse_instant(bad), None, "{bad}");
        }
    }
}
