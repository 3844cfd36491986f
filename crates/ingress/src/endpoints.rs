//! The endpoints besides the model calls: readiness, the model list, the
//! key's usage, route explanations, and the answers to unknown paths and
//! wrong methods.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sy_protocol::{ApiSurface, ErrorCode};

use crate::error::ApiError;
use crate::intake::{check_content_type, read_body};
use crate::state::AppState;
use crate::{admission, classify, extract, route, usage};

pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.bus.is_connected() {
        // Serving; say so when rate limits are counted locally (Redis away).
        match state.rate_limits.as_ref().and_then(|r| r.degraded_detail()) {
            Some(detail) => (StatusCode::OK, format!("ready; {detail}")).into_response(),
            None => (StatusCode::OK, "ready").into_response(),
        }
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "NATS is not connected").into_response()
    }
}

pub(crate) async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("Invalid URL ({} {})", req.method(), req.uri().path()),
    )
}

pub(crate) async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "Method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
}

/// `GET /v1/pipelines/runs/{id}`: a pipeline run of the caller's project.
pub(crate) async fn get_pipeline_run(
    State(state): State<Arc<AppState>>,
    caller: extract::Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match crate::pipeline::get_run(&state, &caller, &id).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn get_usage(
    State(state): State<Arc<AppState>>,
    extract::Caller { key_id, .. }: extract::Caller,
    axum::extract::Query(params): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    match usage::usage(state.clickhouse.as_ref(), &key_id, &params).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/billing/balance`: the prepaid balance of the caller's org (a
/// tenant's key; a key from the config file belongs to no org).
pub(crate) async fn get_balance(
    State(state): State<Arc<AppState>>,
    caller: extract::Caller,
) -> Response {
    let (Some(admin), Some(grant)) = (&state.admin, &caller.grant) else {
        return ApiError::new(
            ErrorCode::NotFound,
            "Balances are kept per org; this key belongs to none.",
        )
        .into_response();
    };
    let org = grant.owner.org_id;
    match admin.store().balance(org).await {
        Ok(b) => axum::Json(sy_control::admin::balance_view(org, &b)).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "Reading a balance failed.");
            ApiError {
                retry_after_secs: Some(1),
                ..ApiError::new(
                    ErrorCode::Overloaded,
                    "The balance cannot be read right now; retry shortly.",
                )
            }
            .into_response()
        }
    }
}

/// `POST /v1/billing/topups {provider, amount, currency}`: a top-up order for
/// the caller's org and where to pay it, as the admin API's
/// `POST /admin/v1/orgs/{id}/topups` makes it (a tenant's key; the order is
/// audited under `key:<id>`). Making an order moves no money: the balance is
/// credited only when the payment provider confirms the payment.
pub(crate) async fn create_topup(
    State(state): State<Arc<AppState>>,
    caller: extract::Caller,
    extract::RequestId(request_id): extract::RequestId,
    req: Request,
) -> Response {
    let (Some(admin), Some(grant)) = (&state.admin, &caller.grant) else {
        return ApiError::new(
            ErrorCode::NotFound,
            "Balances are kept per org; this key belongs to none.",
        )
        .into_response();
    };
    let (parts, body) = req.into_parts();
    let body = match check_content_type(&parts.headers) {
        Ok(()) => read_body(state.max_body_bytes, &parts.headers, body).await,
        Err(e) => Err(e),
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let actor = sy_control::audit::Actor {
        identity: format!("key:{}", caller.key_id),
        role: "key".into(),
        request_id: Some(request_id.to_string()),
        client_ip: None,
    };
    match sy_control::admin::top_up(admin, &actor, grant.owner.org_id, &body).await {
        Ok(order) => (StatusCode::CREATED, axum::Json(order)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/billing/usage?period=YYYY-MM`: the caller's org's month so far
/// (a tenant's key; a key from the config file belongs to no org).
pub(crate) async fn get_org_usage(
    State(state): State<Arc<AppState>>,
    caller: extract::Caller,
    axum::extract::Query(params): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let Some(grant) = &caller.grant else {
        return ApiError::new(
            ErrorCode::NotFound,
            "Usage by org is kept per org; this key belongs to none (GET /v1/usage has its own).",
        )
        .into_response();
    };
    let org = grant.owner.org_id.to_string();
    match usage::org_usage(state.clickhouse.as_ref(), &org, &params).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The client API `?api=` names for explain (Chat Completions when none).
pub(crate) fn explained_api(api: Option<&str>) -> Result<ApiSurface, ApiError> {
    match api {
        None => Ok(ApiSurface::ChatCompletions),
        Some(api) => serde_json::from_value(serde_json::Value::String(api.to_owned())).map_err(|_| {
            ApiError::invalid(
                "api",
                format!(
                    "Unknown api '{api}'; expected chat_completions, messages, responses, embeddings, rerank, images, image_edits, transcriptions, translations or speech."
                ),
            )
        }),
    }
}

/// The routing decision for `body`, a request of `surface` (explain), with
/// `defaults` as the caller's default tags.
pub(crate) async fn explain_body(
    state: &AppState,
    surface: ApiSurface,
    headers: &axum::http::HeaderMap,
    body: bytes::Bytes,
    defaults: &[(String, String)],
    request_id: uuid::Uuid,
) -> Result<serde_json::Value, ApiError> {
    let (request, payload, _uploads) =
        crate::flow::parse_body(surface, headers, body, request_id).await?;
    let hints = admission::Hints::from_headers(headers);
    let prediction = match payload {
        None => Some(classify::decide(&state.classifier, &hints, &request)?),
        Some(_) => None,
    };
    let size =
        admission::Payload::size(payload.as_ref()).unwrap_or_else(|| route::Size::chat(&request));
    let tags = crate::tags::of(hints.tags, Some(&request), defaults)?;
    route::explain(
        state,
        &request,
        prediction.as_ref(),
        &size,
        request_id,
        &tags,
    )
}

/// `GET /console` where no admin API runs (no `[tenants]`): what is missing.
pub(crate) async fn console_off() -> Response {
    ApiError::new(
        ErrorCode::NotFound,
        "The console needs the admin API: configure [postgres] and [tenants] (docs/console.md).",
    )
    .into_response()
}

/// `POST /v1/route/explain[?api=<client API>]`: the routing decision for
/// the body a client would send to that API (`chat_completions` by
/// default; `messages`, `responses`, `embeddings`, `rerank`, `images`,
/// `image_edits`, `transcriptions`, `translations`, `speech`), without
/// calling a provider.
pub(crate) async fn route_explain(
    State(state): State<Arc<AppState>>,
    caller: extract::Caller,
    extract::RequestId(request_id): extract::RequestId,
    axum::extract::Query(params): axum::extract::Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let result = async {
        let surface = explained_api(params.get("api").map(String::as_str))?;
        let limit = crate::flow::body_limit(&state, surface, &parts.headers)?;
        let body = read_body(limit, &parts.headers, body).await?;
        let defaults = caller.grant.as_ref().map_or(&[][..], |g| &g.tags[..]);
        let doc = explain_body(&state, surface, &parts.headers, body, defaults, request_id).await?;
        // A key explains only what it may ask for (its model scope).
        if let Some(model) = doc["model"].as_str() {
            caller.may_use(model)?;
        }
        Ok::<_, ApiError>(doc)
    }
    .await;
    match result {
        Ok(v) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            serde_json::to_vec(&v).unwrap_or_default(),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}
