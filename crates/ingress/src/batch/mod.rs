//! Batch jobs: the stores behind the Files and Batches APIs (whose endpoints
//! are `surface::files` and `surface::batches`, sharing `http`), the
//! dispatcher that runs a batch's items through the same admission as
//! interactive requests (`dispatch`) and a batch's end (`finish`), input
//! checking ([`input`]) and the output format ([`output`]).
//!
//! State lives in NATS only, so any ingress or dispatcher replica can serve any
//! batch: records in the `<NS>_BATCHES` KV bucket (written with compare-and-set
//! on the entry's revision), files in the `<NS>_FILES` object store, items on
//! the batch request stream, results on the results stream. See docs/batches.md.

/// The value, or (from the enclosing function) `Outcome::Retry` with the error.
/// (For the dispatcher and the batch's end.)
macro_rules! tryo {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Outcome::Retry(e.to_string()),
        }
    };
}

pub(crate) mod dispatch;
mod finish;
pub(crate) mod http;
pub mod input;
pub mod output;
pub(crate) mod webhook;

use std::collections::HashMap;

use async_nats::jetstream::kv;
use async_nats::jetstream::object_store::{ObjectMetadata, ObjectStore};
use serde::Serialize;
use sy_bus::Bus;
use sy_config::BatchConfig;
use sy_protocol::batch::{BATCH_ENDPOINTS, BatchJob, BatchRecord, COMPLETION_WINDOW};
use tokio::io::AsyncReadExt;

use crate::error::ApiError;

/// The stores every batch endpoint and the dispatcher use.
pub(crate) struct Stores {
    pub records: kv::Store,
    pub files: ObjectStore,
    pub config: BatchConfig,
    /// When this process may dispatch its next item (`[batch] max_rate`).
    pacer: tokio::sync::Mutex<tokio::time::Instant>,
    /// Batches this process runs, per API key (`[batch] max_running_per_key`).
    turns: std::sync::Mutex<HashMap<String, u32>>,
}

/// A batch this process runs for a key: the key's turn, given back when dropped.
pub(crate) struct Turn {
    stores: std::sync::Arc<Stores>,
    key: String,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut turns = self.stores.turns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = turns.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                turns.remove(&self.key);
            }
        }
    }
}

impl Stores {
    /// Creates (or opens) the streams, the bucket and the object store.
    pub async fn open(bus: &Bus, config: &BatchConfig) -> Result<Stores, sy_bus::BusError> {
        // (The request stream is the ingress's own, made before this.)
        bus.ensure_batch_streams().await?;
        // For completion webhooks (a client per delivery: see webhook.rs).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Stores {
            records: bus.batch_store(config.file_max_age).await?,
            files: bus.file_store(config.file_max_age).await?,
            config: config.clone(),
            pacer: tokio::sync::Mutex::new(tokio::time::Instant::now()),
            turns: Default::default(),
        })
    }

    /// A turn for one more batch of `key` in this process, unless the key
    /// runs `[batch] max_running_per_key` here already.
    pub fn take_turn(self: &std::sync::Arc<Self>, key: &str) -> Option<Turn> {
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        let n = turns.entry(key.to_owned()).or_default();
        if *n >= self.config.max_running_per_key {
            return None;
        }
        *n += 1;
        Some(Turn {
            stores: self.clone(),
            key: key.to_owned(),
        })
    }

    /// Waits for this process's next dispatch slot: at most `[batch] max_rate`
    /// items a second across every batch it runs, so that batches leave the
    /// CPU to interactive traffic (docs/BENCHMARKS.md).
    pub async fn pace(&self) {
        if self.config.max_rate == 0 {
            return;
        }
        let step = std::time::Duration::from_secs(1) / self.config.max_rate;
        let slot = {
            let mut next = self.pacer.lock().await;
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + step;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// The newest `limit` records (ids before `after`, when given) that
    /// `keep` keeps, newest first, and whether more are kept beyond them.
    pub async fn newest(
        &self,
        limit: usize,
        after: Option<&str>,
        keep: impl Fn(&BatchRecord) -> bool,
    ) -> Result<(Vec<BatchRecord>, bool), String> {
        use futures::StreamExt;
        let mut keys: Vec<String> = self
            .records
            .keys()
            .await
            .map_err(|e| e.to_string())?
            .filter_map(|k| async move { k.ok() })
            .collect()
            .await;
        // Ids are time-ordered: newest first.
        keys.sort_by(|a, b| b.cmp(a));
        if let Some(after) = after {
            keys.retain(|k| k.as_str() < after);
        }
        let mut data = Vec::new();
        for k in keys {
            let Some((r, _)) = self.record(&k).await? else {
                continue;
            };
            if !keep(&r) {
                continue;
            }
            if data.len() == limit {
                return Ok((data, true));
            }
            data.push(r);
        }
        Ok((data, false))
    }

    /// A batch record and its revision.
    pub async fn record(&self, id: &str) -> Result<Option<(BatchRecord, u64)>, String> {
        if !valid_id(id) {
            return Ok(None);
        }
        let entry = self.records.entry(id).await.map_err(|e| e.to_string())?;
        Ok(entry.and_then(|e| {
            if e.operation != kv::Operation::Put {
                return None;
            }
            serde_json::from_slice(&e.value)
                .ok()
                .map(|r| (r, e.revision))
        }))
    }

    /// Writes a record if nobody changed it since `revision`; the new revision,
    /// or `None` when someone did (reload and decide again).
    pub async fn save(&self, record: &BatchRecord, revision: u64) -> Result<Option<u64>, String> {
        let value = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        match self
            .records
            .update(&record.batch.id, value.into(), revision)
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Creates a record; `None` when one exists already.
    pub async fn create(&self, record: &BatchRecord) -> Result<Option<u64>, String> {
        let value = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        match self.records.create(&record.batch.id, value.into()).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Stores a file owned by `owner` (a project, or a file key).
    pub async fn put_file(
        &self,
        file: &FileObject,
        owner: &str,
        data: &[u8],
    ) -> Result<(), String> {
        let mut metadata = HashMap::new();
        metadata.insert("owner".to_owned(), owner.to_owned());
        metadata.insert("purpose".to_owned(), file.purpose.clone());
        metadata.insert("filename".to_owned(), file.filename.clone());
        metadata.insert("created_at".to_owned(), file.created_at.to_string());
        let meta = ObjectMetadata {
            name: file.id.clone(),
            metadata,
            ..Default::default()
        };
        let mut reader = data;
        self.files
            .put(meta, &mut reader)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// A file's object, if it exists and belongs to `owner` (a project, or a file key).
    pub async fn file(&self, id: &str, owner: &str) -> Result<Option<FileObject>, String> {
        if !valid_id(id) {
            return Ok(None);
        }
        match self.files.info(id).await {
            Ok(info) if !info.deleted => {
                let f = FileObject::from_info(&info);
                Ok((info.metadata.get("owner").map(String::as_str) == Some(owner)).then_some(f))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == async_nats::jetstream::object_store::InfoErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// A file's bytes (the caller checked the owner).
    pub async fn file_content(&self, id: &str) -> Result<Vec<u8>, String> {
        let mut object = self.files.get(id).await.map_err(|e| e.to_string())?;
        let mut data = Vec::with_capacity(object.info().size);
        object
            .read_to_end(&mut data)
            .await
            .map_err(|e| e.to_string())?;
        Ok(data)
    }
}

/// OpenAI's file object.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FileObject {
    pub id: String,
    pub object: &'static str,
    pub bytes: u64,
    pub created_at: u64,
    pub filename: String,
    pub purpose: String,
    pub status: &'static str,
}

impl FileObject {
    pub fn new(id: String, bytes: u64, filename: String, purpose: &str) -> Self {
        FileObject {
            id,
            object: "file",
            bytes,
            created_at: sy_protocol::now_unix_ms() / 1000,
            filename,
            purpose: purpose.to_owned(),
            status: "processed",
        }
    }

    pub(crate) fn from_info(info: &async_nats::jetstream::object_store::ObjectInfo) -> Self {
        let m = &info.metadata;
        FileObject {
            id: info.name.clone(),
            object: "file",
            bytes: info.size as u64,
            created_at: m
                .get("created_at")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
            filename: m.get("filename").cloned().unwrap_or_default(),
            purpose: m.get("purpose").cloned().unwrap_or_default(),
            status: "processed",
        }
    }
}

/// A new id with a prefix (`file-`, `batch_`): time-ordered, unguessable.
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

/// Ids are NATS keys and object names: letters, digits, `-` and `_` only.
fn valid_id(id: &str) -> bool {
    sy_protocol::is_valid_token(id)
}

/// Now, Unix seconds.
pub(crate) fn now_secs() -> u64 {
    sy_protocol::now_unix_ms() / 1000
}

/// Checks what a batch is asked to be; shared with the native submission path.
pub(crate) fn check_job(job: &BatchJob, webhook_allow: &[ipnet::IpNet]) -> Result<(), ApiError> {
    if !BATCH_ENDPOINTS.contains(&job.endpoint.as_str()) {
        return Err(ApiError::invalid(
            "endpoint",
            format!(
                "Unsupported endpoint '{}'; batches run {}.",
                job.endpoint,
                BATCH_ENDPOINTS.join(" or ")
            ),
        ));
    }
    if job.completion_window != COMPLETION_WINDOW {
        return Err(ApiError::invalid(
            "completion_window",
            format!(
                "Unsupported completion_window '{}'; only '{}' is supported.",
                job.completion_window, COMPLETION_WINDOW
            ),
        ));
    }
    if job.metadata.len() > 16
        || job
            .metadata
            .iter()
            .any(|(k, v)| k.len() > 64 || v.len() > 512)
    {
        return Err(ApiError::invalid(
            "metadata",
            "metadata holds at most 16 pairs, keys up to 64 and values up to 512 characters.",
        ));
    }
    if let Some(url) = &job.webhook_url {
        crate::batch::webhook::check_url(url, webhook_allow)
            .map_err(|e| ApiError::invalid("webhook_url", e))?;
    }
    Ok(())
}
