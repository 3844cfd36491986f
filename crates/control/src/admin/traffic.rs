//! Traffic from ClickHouse for operators (and the console): `GET
//! /admin/v1/overview` (requests, failures, latency, time to first token,
//! queue wait and spend over a window, in buckets and by target) and `GET
//! /admin/v1/requests` (recent requests found by id, key, model, status or
//! tag; one request's attempts with `request_id`). An org's identity sees
//! its org's traffic only.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Extension, Query, State};
use axum::response::IntoResponse;
use axum::{Json, http::StatusCode};
use serde_json::json;

use super::handlers::{Answer, limit_param, org_filter, uuid_param};
use super::{Admin, AdminError, Caller};

/// The windows the overview offers, and the bucket each is drawn in.
const WINDOWS: [(&str, u32, u32); 5] = [
    ("15m", 900, 30),
    ("1h", 3_600, 60),
    ("6h", 21_600, 600),
    ("24h", 86_400, 1_800),
    ("7d", 604_800, 3_600),
];

fn clickhouse(admin: &Admin) -> Result<&sy_config::ClickhouseConfig, AdminError> {
    admin
        .clickhouse
        .as_ref()
        .ok_or_else(|| AdminError::not_configured("Traffic needs [clickhouse] in the config."))
}

fn known(q: &HashMap<String, String>, allowed: &[&str]) -> Result<(), AdminError> {
    match q.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(AdminError::invalid(format!(
            "Unknown parameter '{k}'; use {}.",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn unreadable(e: &sy_accounting::AccountingError) -> AdminError {
    tracing::warn!(error = %e, "A traffic query failed.");
    AdminError::not_configured("Traffic could not be read; retry shortly.")
}

fn now_secs() -> u32 {
    u32::try_from(sy_protocol::now_unix_ms() / 1000).unwrap_or(u32::MAX)
}

/// `GET /admin/v1/overview?window=1h[&org_id=]`.
pub(super) async fn overview(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let ch = clickhouse(&admin)?;
    known(&q, &["window", "org_id"])?;
    let name = q.get("window").map_or("1h", String::as_str);
    let Some(&(_, span, bucket)) = WINDOWS.iter().find(|(w, _, _)| *w == name) else {
        return Err(AdminError::invalid(
            "'window' must be 15m, 1h, 6h, 24h or 7d.",
        ));
    };
    let org = org_filter(&caller, uuid_param(&q, "org_id")?)?.map(|o| o.to_string());
    // Whole buckets, the current one last.
    let end = (now_secs() / bucket + 1) * bucket;
    let start = end.saturating_sub(span);
    let series = sy_accounting::traffic(ch, org.as_deref(), start, end, bucket)
        .await
        .map_err(|e| unreadable(&e))?;
    let targets = sy_accounting::traffic_by_target(ch, org.as_deref(), start, end)
        .await
        .map_err(|e| unreadable(&e))?;
    Ok(Json(json!({
        "window": name, "start": start, "end": end, "bucket_seconds": bucket,
        "org_id": org, "series": series, "targets": targets,
    }))
    .into_response())
}

/// `GET /admin/v1/requests?[request_id|key_id|model|status|tag|since|limit|org_id]`.
pub(super) async fn requests(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let ch = clickhouse(&admin)?;
    known(
        &q,
        &[
            "request_id",
            "key_id",
            "model",
            "status",
            "tag",
            "since",
            "limit",
            "org_id",
        ],
    )?;
    let limit = limit_param(&q, 50, 500)?;
    let since = match q.get("since") {
        None => now_secs().saturating_sub(7 * 86_400),
        Some(v) => sy_accounting::parse_instant(v).ok_or_else(|| {
            AdminError::invalid("'since' must be a date like 2026-11-01 or Unix seconds.")
        })?,
    };
    let tag = match q.get("tag") {
        None => None,
        Some(t) => {
            let (k, v) = t
                .split_once('=')
                .ok_or_else(|| AdminError::invalid("'tag' must be key=value, like tier=free."))?;
            if !sy_protocol::tag::valid_key(k) || !sy_protocol::tag::valid_value(v) {
                return Err(AdminError::invalid(format!(
                    "'tag': a tag {}",
                    sy_protocol::tag::RULES
                )));
            }
            Some((k.to_owned(), v.to_owned()))
        }
    };
    let text = |name: &str| -> Result<Option<String>, AdminError> {
        match q.get(name) {
            Some(v) if v.is_empty() || v.len() > 256 => Err(AdminError::invalid(format!(
                "'{name}' must be 1 to 256 characters."
            ))),
            v => Ok(v.cloned()),
        }
    };
    let filter = sy_accounting::RequestFilter {
        org_id: org_filter(&caller, uuid_param(&q, "org_id")?)?.map(|o| o.to_string()),
        request_id: uuid_param(&q, "request_id")?,
        key_id: text("key_id")?,
        model: text("model")?,
        status: text("status")?,
        tag,
        start: since,
        limit,
    };
    let rows = sy_accounting::recent_requests(ch, &filter)
        .await
        .map_err(|e| unreadable(&e))?;
    if filter.request_id.is_some() && rows.is_empty() {
        return Err(AdminError::not_found("request"));
    }
    Ok((
        StatusCode::OK,
        Json(json!({"object": "list", "data": rows})),
    )
        .into_response())
}
