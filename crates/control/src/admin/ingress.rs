//! Ingress for operators (and the console): every target's live state
//! (`GET /admin/v1/targets`), forcing one off, on or back to its health
//! (`PUT /admin/v1/targets`, audited), the routing table
//! (`GET /admin/v1/routing`) and the routing decision for a request body
//! without calling a provider (`POST /admin/v1/route/explain`), and the
//! batches with their progress (`GET /admin/v1/batches`). The state lives
//! in the ingress (and NATS), which lends it through [`Ingress`]; without
//! one (the admin API on its own), these answer 503.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::Value;

use super::handlers::{Answer, parse};
use super::{Admin, AdminError, Caller};
use crate::audit::Entry;

/// A boxed future, for [`Ingress`]'s methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why [`Ingress`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngressError {
    /// The request is wrong (400), with why.
    Invalid(String),
    /// The bus or the ingress could not do it now (503).
    Unavailable(String),
}

impl From<IngressError> for AdminError {
    fn from(e: IngressError) -> Self {
        match e {
            IngressError::Invalid(m) => AdminError::invalid(m),
            IngressError::Unavailable(m) => AdminError::not_configured(m),
        }
    }
}

/// What the ingress lends the admin API.
pub trait Ingress: Send + Sync + std::fmt::Debug {
    /// Every target's live state and every provider's load.
    fn targets(&self) -> Value;
    /// The routing table in effect: models and routers.
    fn table(&self) -> Value;
    /// Forces `provider`/`model` `off`, `on` or back to `auto` for every
    /// ingress and worker, as `by`; the override stored.
    fn force<'a>(
        &'a self,
        provider: &'a str,
        model: &'a str,
        state: &'a str,
        by: &'a str,
    ) -> BoxFuture<'a, Result<Value, IngressError>>;
    /// The routing decision for `body`, a request of client API `api`
    /// (`chat_completions` when none), without calling a provider.
    fn explain<'a>(
        &'a self,
        api: Option<&'a str>,
        headers: &'a HeaderMap,
        body: Bytes,
    ) -> BoxFuture<'a, Result<Value, IngressError>>;
    /// The newest `limit` batches of every key, with their progress and
    /// owner.
    fn batches(&self, limit: usize) -> BoxFuture<'_, Result<Value, IngressError>>;
}

fn ingress(admin: &Admin) -> Result<Arc<dyn Ingress>, AdminError> {
    admin.ingress.get().cloned().ok_or_else(|| {
        AdminError::not_configured("This is served by an ingress; this admin API runs without one.")
    })
}

/// `GET /admin/v1/targets`.
pub(super) async fn targets(State(admin): State<Arc<Admin>>) -> Answer {
    Ok(Json(ingress(&admin)?.targets()).into_response())
}

/// `GET /admin/v1/routing`.
pub(super) async fn table(State(admin): State<Arc<Admin>>) -> Answer {
    Ok(Json(ingress(&admin)?.table()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Force {
    provider: String,
    model: String,
    state: String,
}

/// `PUT /admin/v1/targets {"provider", "model", "state": "off"|"on"|"auto"}`.
pub(super) async fn force(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Answer {
    let f: Force = parse(&body)?;
    if !matches!(f.state.as_str(), "off" | "on" | "auto") {
        return Err(AdminError::invalid("'state' must be off, on or auto."));
    }
    let routing = ingress(&admin)?;
    let before = routing.targets();
    let done = routing
        .force(&f.provider, &f.model, &f.state, &caller.name)
        .await?;
    let entry = Entry {
        action: "target.force",
        target_kind: "target",
        target_id: format!("{}/{}", f.provider, f.model),
        // What the target was forced to before (null: its health).
        before: before["targets"].as_array().and_then(|rows| {
            rows.iter()
                .find(|r| r["provider"] == f.provider.as_str() && r["model"] == f.model.as_str())
                .map(|r| serde_json::json!({"forced": r["forced"]}))
        }),
        after: Some(done.clone()),
    };
    admin.store.audit_event(&caller.actor(), entry).await?;
    Ok(Json(done).into_response())
}

/// `POST /admin/v1/route/explain[?api=]`.
pub(super) async fn explain(
    State(admin): State<Arc<Admin>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    if let Some(k) = q.keys().find(|k| k.as_str() != "api") {
        return Err(AdminError::invalid(format!(
            "Unknown parameter '{k}'; use api."
        )));
    }
    let routing = ingress(&admin)?;
    let doc = routing
        .explain(q.get("api").map(String::as_str), &headers, body)
        .await?;
    Ok(Json(doc).into_response())
}

/// `GET /admin/v1/batches?limit=` (1 to 200, default 50): newest first.
pub(super) async fn batches(
    State(admin): State<Arc<Admin>>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    if let Some(k) = q.keys().find(|k| k.as_str() != "limit") {
        return Err(AdminError::invalid(format!(
            "Unknown parameter '{k}'; use limit."
        )));
    }
    let limit = super::handlers::limit_param(&q, 50, 200)?;
    let list = ingress(&admin)?.batches(limit as usize).await?;
    Ok(Json(list).into_response())
}
