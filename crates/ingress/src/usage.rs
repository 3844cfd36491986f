//! `GET /v1/usage?start=…&end=…&group_by=model|day`: the calling key's own usage.

use std::collections::HashMap;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sy_accounting::{GroupBy, UsageGroup};
use sy_config::ClickhouseConfig;
use sy_protocol::{ErrorCode, now_unix_ms};

use crate::error::ApiError;

const DEFAULT_DAYS: u64 = 30;

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

#[derive(Serialize)]
struct Body<'a> {
    object: &'static str,
    key_id: &'a str,
    start: u32,
    end: u32,
    group_by: GroupBy,
    data: Vec<UsageGroup>,
}

/// Validates the query, runs it for `key_id`, renders the answer.
pub async fn usage(
    clickhouse: Option<&ClickhouseConfig>,
    key_id: &str,
    params: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let Some(ch) = clickhouse else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "Usage is not available: this Switchyard has no [clickhouse] configured.",
        ));
    };
    for k in params.keys() {
        if !matches!(k.as_str(), "start" | "end" | "group_by") {
            return Err(ApiError::invalid(
                k.clone(),
                format!("Unknown parameter '{k}'; use start, end and group_by."),
            ));
        }
    }
    let now = u32::try_from(now_unix_ms() / 1000).unwrap_or(u32::MAX);
    let instant = |name: &str, default: u32| match params.get(name) {
        None => Ok(default),
        Some(v) => parse_instant(v).ok_or_else(|| {
            ApiError::invalid(
                name,
                format!("'{name}' must be a date like 2026-11-01 or Unix seconds, not '{v}'."),
            )
        }),
    };
    let end = instant("end", now.saturating_add(1))?;
    let start = instant("start", end.saturating_sub((DEFAULT_DAYS * 86_400) as u32))?;
    if start >= end {
        return Err(ApiError::invalid("start", "'start' must be before 'end'."));
    }
    let group_by = match params.get("group_by").map(String::as_str) {
        None | Some("model") => GroupBy::Model,
        Some("day") => GroupBy::Day,
        Some(other) => {
            return Err(ApiError::invalid(
                "group_by",
                format!("'group_by' must be 'model' or 'day', not '{other}'."),
            ));
        }
    };
    let data = sy_accounting::usage_for_key(ch, key_id, start, end, group_by)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "Usage query failed.");
            ApiError::new(
                ErrorCode::Internal,
                "Usage could not be read; retry shortly.",
            )
        })?;
    let body = serde_json::to_vec(&Body {
        object: "list",
        key_id,
        start,
        end,
        group_by,
        data,
    })
    .unwrap_or_default();
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

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
