//! The ingress's live view of every target ([`sy_router::live::LiveTable`]):
//! one subscription to every worker's observations, and a poller reading each
//! provider's load from its worker pool's consumer once a second. Both stop when
//! the ingress's state is dropped. `GET /v1/route/targets` shows the table.

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use sy_bus::Bus;
use sy_protocol::now_unix_ms;
use sy_router::live::{LiveTable, Load};

use crate::extract::Caller;
use crate::state::AppState;

/// How often each provider's load is read.
const LOAD_EVERY: Duration = Duration::from_secs(1);

/// Starts feeding `table`; returns once the subscription is in place.
pub(crate) async fn start(
    bus: &Bus,
    table: &Arc<LiveTable>,
    providers: Vec<String>,
) -> Result<(), sy_bus::BusError> {
    let mut sub = bus.subscribe_live().await?;
    let weak: Weak<LiveTable> = Arc::downgrade(table);
    tokio::spawn({
        let weak = weak.clone();
        async move {
            while let Some(o) = sub.next().await {
                let Some(table) = weak.upgrade() else { break };
                table.observe(&o, now_unix_ms());
            }
        }
    });
    let bus = bus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(LOAD_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            for p in &providers {
                let read = bus.worker_load(p).await;
                let Some(table) = weak.upgrade() else { return };
                match read {
                    Ok((in_flight, queued, cap)) => table.set_load(
                        p,
                        Load {
                            in_flight,
                            queued,
                            cap,
                            read_unix_ms: now_unix_ms(),
                        },
                    ),
                    Err(e) => tracing::trace!(provider = %p, error = %e, "No load reading."),
                }
            }
        }
    });
    Ok(())
}

/// Follows operators' target overrides into `table` (all ingresses and workers
/// see the same bucket).
pub(crate) fn follow_overrides(bus: &Bus, table: &Arc<LiveTable>) {
    let weak = Arc::downgrade(table);
    bus.follow_overrides(move |o| {
        let Some(table) = weak.upgrade() else {
            return false;
        };
        table.force(&o.provider, &o.model, o.state.forced());
        true
    });
}

/// `GET /v1/route/targets`: every target's live state and every provider's load.
pub(crate) async fn targets(State(state): State<Arc<AppState>>, caller: Caller) -> Response {
    if let Err(e) = deployments_own(&caller) {
        return e.into_response();
    }
    Json(state.live.snapshot(now_unix_ms())).into_response()
}

/// Target state and overrides are the deployment's: its own keys (the
/// config file's) may use `/v1/route/targets`; a tenant's key may not (it
/// would see other tenants' providers and could take one away from them).
/// The admin API has the same (`/admin/v1/targets`) with roles and audit.
fn deployments_own(caller: &Caller) -> Result<(), crate::error::ApiError> {
    match caller.grant {
        None => Ok(()),
        Some(_) => Err(crate::error::ApiError::new(
            sy_protocol::ErrorCode::PermissionDenied,
            "Target state and overrides are the deployment's: use the admin API (GET and PUT /admin/v1/targets).",
        )),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForceBody {
    provider: String,
    model: String,
    state: sy_protocol::ForcedState,
}

/// `PUT /v1/route/targets`: `{"provider", "model", "state": "off"|"on"|"auto"}`
/// forces a target off or on for every ingress and worker (NATS KV), or gives
/// it back to its health. Logged as an audit line (an audit table once tenancy
/// lands).
pub(crate) async fn force(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    req: axum::extract::Request,
) -> Response {
    if let Err(e) = deployments_own(&caller) {
        return e.into_response();
    }
    let by = caller.key_id;
    let (parts, body) = req.into_parts();
    let result: Result<Response, crate::error::ApiError> = async {
        crate::intake::check_content_type(&parts.headers)?;
        let body = crate::intake::read_body(state.max_body_bytes, &parts.headers, body).await?;
        let f: ForceBody = serde_json::from_slice(&body)
            .map_err(|e| crate::error::ApiError::invalid("body", format!("Expected {{\"provider\", \"model\", \"state\": \"off\"|\"on\"|\"auto\"}}: {e}")))?;
        // Only a configured target can be forced: anything else would be a
        // key in the override bucket that nothing reads (and client text of
        // any length in a NATS key).
        if !state.routing().serves(&f.provider, &f.model) {
            return Err(crate::error::ApiError::invalid(
                "model",
                "No configured route sends requests to that provider and model.",
            ));
        }
        let o = sy_protocol::TargetOverride {
            provider: f.provider,
            model: f.model,
            state: f.state,
            by,
            at_unix_ms: now_unix_ms(),
        };
        state.bus.put_override(&o).await.map_err(|_| {
            crate::error::ApiError::new(
                sy_protocol::ErrorCode::BusUnavailable,
                "The target override could not be stored; retry shortly.",
            )
        })?;
        // Applied here at once; other processes within one NATS hop.
        state.live.force(&o.provider, &o.model, o.state.forced());
        tracing::info!(target: "audit", by = %o.by, provider = %o.provider, model = %o.model, state = ?o.state, "Target forced.");
        Ok(Json(o).into_response())
    }
    .await;
    result.unwrap_or_else(|e| e.into_response())
}
