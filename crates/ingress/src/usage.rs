//! `GET /v1/usage?start=…&end=…&group_by=model|day|tag:<key>`: the calling key's own usage.

use std::collections::HashMap;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sy_accounting::{GroupBy, UsageGroup, month_bounds, parse_instant};
use sy_config::ClickhouseConfig;
use sy_protocol::{ErrorCode, now_unix_ms};

use crate::error::ApiError;

const DEFAULT_DAYS: u64 = 30;

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
    let ch = configured(clickhouse)?;
    known(params, &["start", "end", "group_by"])?;
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
        None => GroupBy::Model,
        Some(g) => match GroupBy::parse(g) {
            Some(g @ (GroupBy::Model | GroupBy::Day | GroupBy::Tag(_))) => g,
            _ => {
                return Err(ApiError::invalid(
                    "group_by",
                    format!("'group_by' must be 'model', 'day' or 'tag:<key>', not '{g}'."),
                ));
            }
        },
    };
    let data = sy_accounting::usage_for_key(ch, key_id, start, end, group_by.clone())
        .await
        .map_err(query_failed)?;
    Ok(json(&Body {
        object: "list",
        key_id,
        start,
        end,
        group_by,
        data,
    }))
}

/// The ClickHouse usage is read from, or the error saying there is none.
fn configured(clickhouse: Option<&ClickhouseConfig>) -> Result<&ClickhouseConfig, ApiError> {
    clickhouse.ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            "Usage is not available: this Switchyard has no [clickhouse] configured.",
        )
    })
}

/// Refuses a parameter not among `names`, naming them.
fn known(params: &HashMap<String, String>, names: &[&str]) -> Result<(), ApiError> {
    match params.keys().find(|k| !names.contains(&k.as_str())) {
        Some(k) => Err(ApiError::invalid(
            k.clone(),
            format!("Unknown parameter '{k}'; use {}.", names.join(", ")),
        )),
        None => Ok(()),
    }
}

fn query_failed(e: sy_accounting::AccountingError) -> ApiError {
    tracing::warn!(error = %e, "Usage query failed.");
    ApiError::new(
        ErrorCode::Internal,
        "Usage could not be read; retry shortly.",
    )
}

fn json<T: Serialize>(body: &T) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response()
}

#[derive(Serialize)]
struct OrgBody<'a> {
    object: &'static str,
    org_id: &'a str,
    period: String,
    start: u32,
    end: u32,
    group_by: GroupBy,
    data: Vec<UsageGroup>,
}

/// `GET /v1/billing/usage?period=YYYY-MM&group_by=model|day|project|key`: the
/// caller's org's usage and what it was billed in a calendar month (UTC; the
/// current one so far by default).
pub async fn org_usage(
    clickhouse: Option<&ClickhouseConfig>,
    org_id: &str,
    params: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let ch = configured(clickhouse)?;
    known(params, &["period", "group_by"])?;
    let now = u32::try_from(now_unix_ms() / 1000).unwrap_or(u32::MAX);
    let period = match params.get("period") {
        Some(p) => p.clone(),
        None => {
            let (y, m) = sy_limits::year_month(u64::from(now));
            format!("{y:04}-{m:02}")
        }
    };
    let (start, end) = month_bounds(&period).ok_or_else(|| {
        ApiError::invalid(
            "period",
            format!("'period' must be a month like 2026-11, not '{period}'."),
        )
    })?;
    let group_by = match params.get("group_by").map(String::as_str) {
        None => GroupBy::Model,
        Some(g) => match GroupBy::parse(g) {
            Some(GroupBy::Org) | None => {
                return Err(ApiError::invalid(
                    "group_by",
                    format!(
                        "'group_by' must be 'model', 'day', 'project', 'key' or 'tag:<key>', not '{g}'."
                    ),
                ));
            }
            Some(g) => g,
        },
    };
    let scope = sy_accounting::UsageScope {
        org_id: Some(org_id),
        ..Default::default()
    };
    let data = sy_accounting::usage(ch, scope, start, end, group_by.clone())
        .await
        .map_err(query_failed)?;
    Ok(json(&OrgBody {
        object: "list",
        org_id,
        period,
        start,
        end,
        group_by,
        data,
    }))
}
