//! The ingress's live view of every target ([`sy_router::live::LiveTable`]):
//! one subscription to every worker's observations, and a poller reading each
//! provider's load from its worker pool's consumer once a second. Both stop when
//! the ingress's state is dropped. `GET /v1/route/targets` shows the table.

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use sy_bus::Bus;
use sy_protocol::now_unix_ms;
use sy_router::live::{LiveTable, Load};

use crate::{AppState, authenticate};

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

/// `GET /v1/route/targets`: every target's live state and every provider's load.
pub(crate) async fn targets(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authenticate(&state, &headers) {
        return e.into_response();
    }
    Json(state.live.snapshot(now_unix_ms())).into_response()
}
