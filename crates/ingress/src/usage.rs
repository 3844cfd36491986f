//! `GET /v1/usage?start=…&end=…&group_by=model|day`: the calling key's own usage.

use std::collections::HashMap;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sy_accounting::{GroupBy, UsageGroup, parse_instant};
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
