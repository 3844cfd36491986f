//! What the admin API (and so the operator console) reads and changes of
//! this ingress: live target state, overrides, the routing table, explain
//! and batches ([`sy_control::admin::ingress::Ingress`]). Held weakly: the
//! admin API lives inside the state it lends from.

use std::sync::{Arc, Weak};

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use sy_control::admin::ingress::{BoxFuture, Ingress, IngressError};
use sy_protocol::now_unix_ms;

use crate::state::AppState;

/// The ingress's state, lent to its admin API.
#[derive(Debug)]
pub(crate) struct Lent(pub Weak<AppState>);

impl Lent {
    fn state(&self) -> Result<Arc<AppState>, IngressError> {
        self.0
            .upgrade()
            .ok_or_else(|| IngressError::Unavailable("The ingress is shutting down.".into()))
    }
}

impl Ingress for Lent {
    fn targets(&self) -> Value {
        match self.0.upgrade() {
            Some(state) => {
                serde_json::to_value(state.live.snapshot(now_unix_ms())).unwrap_or_default()
            }
            None => Value::Null,
        }
    }

    fn table(&self) -> Value {
        let Some(state) = self.0.upgrade() else {
            return Value::Null;
        };
        let routing = state.routing();
        let models: Vec<Value> = routing
            .models
            .values()
            .map(|m| {
                json!({
                    "name": m.name,
                    "targets": m.targets.iter().map(|t| json!({"provider": t.provider, "model": t.model})).collect::<Vec<_>>(),
                    "mid_stream": if m.policy.mid_stream.is_recover() { "recover" } else { "error" },
                    "fallback_on_refusal": m.policy.fallback_on_refusal,
                })
            })
            .collect();
        let routers: Vec<Value> = routing
            .routers
            .values()
            .map(|r| {
                json!({
                    "name": r.name,
                    "routes": r.routes.iter().map(|route| json!({
                        "name": route.name,
                        "kinds": route.kinds,
                        "classes": route.classes,
                        "task_types": route.task_types,
                        "tags": route.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
                        "strategy": route.strategy.as_str(),
                        "targets": route.targets.iter().map(|t| json!({"provider": t.provider, "model": t.model, "weight": t.weight})).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({"models": models, "routers": routers})
    }

    fn force<'a>(
        &'a self,
        provider: &'a str,
        model: &'a str,
        forced: &'a str,
        by: &'a str,
    ) -> BoxFuture<'a, Result<Value, IngressError>> {
        Box::pin(async move {
            let state = self.state()?;
            let forced: sy_protocol::ForcedState =
                serde_json::from_value(Value::String(forced.to_owned())).map_err(|_| {
                    IngressError::Invalid("'state' must be off, on or auto.".into())
                })?;
            // Only a configured target: anything else would be a key in the
            // override bucket that nothing reads.
            if !state.routing().serves(provider, model) {
                return Err(IngressError::Invalid(
                    "No configured route sends requests to that provider and model.".into(),
                ));
            }
            let o = sy_protocol::TargetOverride {
                provider: provider.to_owned(),
                model: model.to_owned(),
                state: forced,
                by: by.to_owned(),
                at_unix_ms: now_unix_ms(),
            };
            state.bus.put_override(&o).await.map_err(|_| {
                IngressError::Unavailable(
                    "The target override could not be stored; retry shortly.".into(),
                )
            })?;
            // Applied here at once; other processes within one NATS hop.
            state.live.force(&o.provider, &o.model, o.state.forced());
            tracing::info!(target: "audit", by = %o.by, provider = %o.provider, model = %o.model, state = ?o.state, "Target forced.");
            Ok(serde_json::to_value(&o).unwrap_or_default())
        })
    }

    fn batches(&self, limit: usize) -> BoxFuture<'_, Result<Value, IngressError>> {
        Box::pin(async move {
            let state = self.state()?;
            let stores = state.batches.as_ref().ok_or_else(|| {
                IngressError::Unavailable("Batch storage is not available.".into())
            })?;
            let (records, has_more) = stores
                .newest(limit, None, |_| true)
                .await
                .map_err(IngressError::Unavailable)?;
            let data: Vec<Value> = records
                .into_iter()
                .map(|r| {
                    let mut v = serde_json::to_value(&r.batch).unwrap_or_default();
                    v["key_id"] = json!(r.key_id);
                    v["owner"] = json!(r.owner());
                    v
                })
                .collect();
            Ok(json!({"object": "list", "data": data, "has_more": has_more}))
        })
    }

    fn explain<'a>(
        &'a self,
        api: Option<&'a str>,
        headers: &'a HeaderMap,
        body: Bytes,
    ) -> BoxFuture<'a, Result<Value, IngressError>> {
        Box::pin(async move {
            let state = self.state()?;
            let invalid = |e: crate::error::ApiError| IngressError::Invalid(e.message);
            let surface = crate::endpoints::explained_api(api).map_err(invalid)?;
            crate::endpoints::explain_body(
                &state,
                surface,
                headers,
                body,
                &[],
                uuid::Uuid::now_v7(),
            )
            .await
            .map_err(invalid)
        })
    }
}
