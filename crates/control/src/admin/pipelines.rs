//! The admin API for pipelines (issue 20; docs/pipelines.md):
//! `/admin/v1/pipelines` lists them, `PUT /admin/v1/pipelines/{name}`
//! creates or replaces one (the config file's `[pipelines.<name>]` as JSON),
//! `DELETE` removes it. Every ingress serves a change from the next request.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::handlers::{Answer, created, parse};
use super::{Admin, Caller};

/// `GET /admin/v1/pipelines`.
pub(super) async fn list_pipelines(State(admin): State<Arc<Admin>>) -> Answer {
    let data = admin.store.pipelines().await?;
    Ok(Json(json!({"data": data})).into_response())
}

/// `GET /admin/v1/pipelines/{name}`.
pub(super) async fn get_pipeline(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
) -> Answer {
    Ok(Json(admin.store.pipeline(&name).await?).into_response())
}

/// `PUT /admin/v1/pipelines/{name} {"description"?, "steps": [...]}`: 201
/// when it is new, 200 when it replaced one.
pub(super) async fn put_pipeline(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Answer {
    let definition: Value = parse(&body)?;
    let (view, made) = admin
        .store
        .put_pipeline(&caller.actor(), &name, &definition)
        .await?;
    Ok(if made {
        created(view)
    } else {
        Json(view).into_response()
    })
}

/// `DELETE /admin/v1/pipelines/{name}`.
pub(super) async fn delete_pipeline(
    State(admin): State<Arc<Admin>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Answer {
    admin.store.delete_pipeline(&caller.actor(), &name).await?;
    Ok(Json(json!({"name": name, "deleted": true})).into_response())
}
