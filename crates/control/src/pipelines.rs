//! Pipelines declared through the admin API (issue 20; docs/pipelines.md),
//! in PostgreSQL (migration 0015): the same definition as the config file's
//! `[pipelines.<name>]`, checked the same way (but for the steps' models,
//! which the ingress checks when a step runs: the control plane does not
//! hold the routing table). Loaded with the key table and reloaded with it
//! on every change, so every ingress serves a new pipeline at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Value, json};
use sqlx::FromRow;
use sy_config::pipeline::{Pipeline, RawPipeline};

use crate::audit::{self, Actor, Entry};
use crate::feed::KeyNotice;
use crate::store::{Store, StoreError};

/// The pipelines of the database, by the model name clients use
/// (`pipeline:<name>`).
pub type Pipelines = HashMap<String, Arc<Pipeline>>;

#[derive(FromRow)]
struct Row {
    name: String,
    definition: Value,
}

/// Checks `definition` as the pipeline `name` (its steps' models are not
/// checked here).
pub fn check(name: &str, definition: &Value) -> Result<Pipeline, StoreError> {
    let raw: RawPipeline = serde_json::from_value(definition.clone())
        .map_err(|e| StoreError::Invalid(format!("the pipeline does not read: {e}")))?;
    let mut errors = Vec::new();
    let mut checked = sy_config::pipeline::validate(
        &mut errors,
        BTreeMap::from([(name.to_owned(), raw)]),
        &|_| true,
    );
    if !errors.is_empty() {
        let why: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Err(StoreError::Invalid(why.join("; ")));
    }
    checked
        .remove(name)
        .ok_or_else(|| StoreError::Invalid("the pipeline does not read".into()))
}

/// A pipeline as the admin API shows it.
fn view(name: &str, definition: &Value) -> Value {
    json!({
        "name": name,
        "model": sy_config::pipeline::model_name(name),
        "description": definition.get("description").cloned().unwrap_or(Value::Null),
        "steps": definition.get("steps").cloned().unwrap_or(json!([])),
    })
}

impl Store {
    /// Every pipeline of the database that still reads, by model name.
    pub async fn load_pipelines(&self) -> Result<Pipelines, StoreError> {
        let rows: Vec<Row> = sqlx::query_as("SELECT name, definition FROM pipelines")
            .fetch_all(self.pool())
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let p = check(&r.name, &r.definition).ok()?;
                Some((sy_config::pipeline::model_name(&r.name), Arc::new(p)))
            })
            .collect())
    }

    /// Every pipeline, as the admin API shows them, by name.
    pub async fn pipelines(&self) -> Result<Vec<Value>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as("SELECT name, definition FROM pipelines ORDER BY name")
            .fetch_all(self.pool())
            .await?;
        Ok(rows.iter().map(|r| view(&r.name, &r.definition)).collect())
    }

    /// The pipeline `name`, as the admin API shows it.
    pub async fn pipeline(&self, name: &str) -> Result<Value, StoreError> {
        let row: Option<Row> =
            sqlx::query_as("SELECT name, definition FROM pipelines WHERE name = $1")
                .bind(name)
                .fetch_optional(self.pool())
                .await?;
        row.map(|r| view(&r.name, &r.definition))
            .ok_or(StoreError::NotFound("pipeline"))
    }

    /// Creates or replaces the pipeline `name`, audited; every ingress
    /// serves it from the next request. True when it was created.
    pub async fn put_pipeline(
        &self,
        actor: &Actor,
        name: &str,
        definition: &Value,
    ) -> Result<(Value, bool), StoreError> {
        check(name, definition)?;
        // Kept as checked: only the fields the definition has.
        let kept = json!({
            "description": definition.get("description").cloned().unwrap_or(Value::Null),
            "steps": definition.get("steps").cloned().unwrap_or(json!([])),
        });
        let mut tx = self.pool().begin().await?;
        let before: Option<Row> =
            sqlx::query_as("SELECT name, definition FROM pipelines WHERE name = $1 FOR UPDATE")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query(
            "INSERT INTO pipelines (name, definition) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET definition = $2, updated_at = now()",
        )
        .bind(name)
        .bind(&kept)
        .execute(&mut *tx)
        .await?;
        let created = before.is_none();
        let e = Entry {
            action: if created {
                "pipeline.create"
            } else {
                "pipeline.update"
            },
            target_kind: "pipeline",
            target_id: name.to_owned(),
            before: before.map(|r| r.definition),
            after: Some(kept.clone()),
        };
        audit::append(&mut tx, actor, e).await?;
        tx.commit().await?;
        self.announce(KeyNotice::All).await;
        Ok((view(name, &kept), created))
    }

    /// Deletes the pipeline `name`, audited.
    pub async fn delete_pipeline(&self, actor: &Actor, name: &str) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let before: Option<Row> =
            sqlx::query_as("DELETE FROM pipelines WHERE name = $1 RETURNING name, definition")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let before = before.ok_or(StoreError::NotFound("pipeline"))?;
        let e = Entry {
            action: "pipeline.delete",
            target_kind: "pipeline",
            target_id: name.to_owned(),
            before: Some(before.definition),
            after: None,
        };
        audit::append(&mut tx, actor, e).await?;
        tx.commit().await?;
        self.announce(KeyNotice::All).await;
        Ok(())
    }
}
