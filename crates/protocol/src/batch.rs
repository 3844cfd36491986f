//! Batch jobs: the submission on `<ns>.batch.submit`, the batch record in the
//! `<NS>_BATCHES` KV bucket (OpenAI's batch object plus what Switchyard needs),
//! an item's place in its batch (on the [`RequestEnvelope`](crate::RequestEnvelope)),
//! an item's result on `<ns>.batch.result.<batch>.<index>`, and the completion
//! announcement on `<ns>.batch.done.<batch>`. Schemas: `schemas/batch-*.schema.json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{ReplyFrame, UsageEvent};

/// Endpoints a batch may target (OpenAI's `endpoint` values that Switchyard serves).
pub const BATCH_ENDPOINTS: [&str; 2] = ["/v1/chat/completions", "/v1/embeddings"];

/// The only completion window OpenAI accepts, and Switchyard with it.
pub const COMPLETION_WINDOW: &str = "24h";

/// How long a batch may run before it expires (the completion window).
pub const COMPLETION_WINDOW_SECS: u64 = 24 * 3600;

/// A batch job, published on `<ns>.batch.submit` (stream `<NS>_BATCH_JOBS`) by
/// the HTTP API after it validated the input, or by any NATS client directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchJob {
    /// The batch id (`batch_…`); chosen by the submitter on the native path, or
    /// left out to have the dispatcher choose one (read it from `<ns>.batch.done.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The API key's name that owns the batch (only it can read, cancel, download).
    pub key_id: String,
    /// `/v1/chat/completions` or `/v1/embeddings`.
    pub endpoint: String,
    /// `24h`.
    #[serde(default = "default_window")]
    pub completion_window: String,
    /// Up to 16 string pairs, returned on the batch object.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Input file in the `<NS>_FILES` object store (one JSON request per line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_file_id: Option<String>,
    /// Or the request lines themselves (native path, small jobs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<serde_json::Value>,
    /// Called (POST, HMAC-SHA256 signed) when the batch ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

fn default_window() -> String {
    COMPLETION_WINDOW.to_owned()
}

/// A batch's status, with OpenAI's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// The input is being checked.
    Validating,
    /// The input was refused (`errors` says why).
    Failed,
    /// Items are being run.
    InProgress,
    /// Every item ran; the output files are being written.
    Finalizing,
    /// Done; output and error files are ready.
    Completed,
    /// The completion window passed first; partial files are ready.
    Expired,
    /// Cancel was asked; items in flight are finishing.
    Cancelling,
    /// Cancelled; partial files are ready.
    Cancelled,
}

impl BatchStatus {
    /// No further change will happen.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BatchStatus::Failed
                | BatchStatus::Completed
                | BatchStatus::Expired
                | BatchStatus::Cancelled
        )
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::Failed => "failed",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }
}

/// OpenAI's `request_counts`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Items in the input.
    pub total: u64,
    /// Items answered with a 2xx.
    pub completed: u64,
    /// Items that ended with an error.
    pub failed: u64,
}

/// One entry of OpenAI's `errors.data`: why the input was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchError {
    /// A short machine-readable code (`invalid_json_line`, `missing_custom_id`, …).
    pub code: String,
    /// What is wrong.
    pub message: String,
    /// The parameter at fault, if one.
    #[serde(default)]
    pub param: Option<String>,
    /// The 1-based input line at fault, if one.
    #[serde(default)]
    pub line: Option<u64>,
}

/// OpenAI's `errors` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchErrors {
    /// Always `list`.
    pub object: String,
    /// The errors.
    pub data: Vec<BatchError>,
}

/// The batch object exactly as OpenAI's API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchObject {
    /// `batch_…`.
    pub id: String,
    /// Always `batch`.
    pub object: String,
    /// The endpoint every line targets.
    pub endpoint: String,
    /// Why the input was refused (status `failed`).
    pub errors: Option<BatchErrors>,
    /// The input file.
    pub input_file_id: String,
    /// `24h`.
    pub completion_window: String,
    /// The status.
    pub status: BatchStatus,
    /// Answers, one JSON line per successful item, in input order.
    pub output_file_id: Option<String>,
    /// Failures, one JSON line per failed item, in input order.
    pub error_file_id: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub in_progress_at: Option<u64>,
    /// Unix seconds.
    pub expires_at: Option<u64>,
    /// Unix seconds.
    pub finalizing_at: Option<u64>,
    /// Unix seconds.
    pub completed_at: Option<u64>,
    /// Unix seconds.
    pub failed_at: Option<u64>,
    /// Unix seconds.
    pub expired_at: Option<u64>,
    /// Unix seconds.
    pub cancelling_at: Option<u64>,
    /// Unix seconds.
    pub cancelled_at: Option<u64>,
    /// Progress.
    pub request_counts: RequestCounts,
    /// The submitter's pairs.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Switchyard's addition: how the completion webhook went (absent without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookDelivery>,
}

/// Where a batch's completion webhook stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// `pending` until the batch ends and the call is made.
    pub status: WebhookStatus,
    /// Calls made.
    pub attempts: u32,
    /// Why the last call failed or the destination was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Unix seconds when it was delivered, given up or refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
}

/// How a completion webhook went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookStatus {
    /// Not called yet (the batch has not ended).
    Pending,
    /// Answered 2xx.
    Delivered,
    /// Never answered 2xx (the retries ran out, or it redirected).
    Failed,
    /// Not called: the destination is internal (loopback, private, link-local, …).
    Refused,
}

impl WebhookStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookStatus::Pending => "pending",
            WebhookStatus::Delivered => "delivered",
            WebhookStatus::Failed => "failed",
            WebhookStatus::Refused => "refused",
        }
    }
}

impl BatchObject {
    /// A new batch in `validating`, created now.
    pub fn new(id: String, job: &BatchJob, input_file_id: String, now_secs: u64) -> Self {
        BatchObject {
            id,
            object: "batch".into(),
            endpoint: job.endpoint.clone(),
            errors: None,
            input_file_id,
            completion_window: job.completion_window.clone(),
            status: BatchStatus::Validating,
            output_file_id: None,
            error_file_id: None,
            created_at: now_secs,
            in_progress_at: None,
            expires_at: Some(now_secs + COMPLETION_WINDOW_SECS),
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            request_counts: RequestCounts::default(),
            metadata: (!job.metadata.is_empty()).then(|| job.metadata.clone()),
            webhook: job.webhook_url.as_ref().map(|_| WebhookDelivery {
                status: WebhookStatus::Pending,
                attempts: 0,
                last_error: None,
                at: None,
            }),
        }
    }

    /// Moves to `status`, stamping its `*_at` time.
    pub fn set_status(&mut self, status: BatchStatus, now_secs: u64) {
        self.status = status;
        let at = Some(now_secs);
        match status {
            BatchStatus::Validating => {}
            BatchStatus::Failed => self.failed_at = at,
            BatchStatus::InProgress => self.in_progress_at = at,
            BatchStatus::Finalizing => self.finalizing_at = at,
            BatchStatus::Completed => self.completed_at = at,
            BatchStatus::Expired => self.expired_at = at,
            BatchStatus::Cancelling => self.cancelling_at = at,
            BatchStatus::Cancelled => self.cancelled_at = at,
        }
    }
}

/// The value kept for a batch in the `<NS>_BATCHES` KV bucket (key = batch id):
/// the batch object every replica serves, plus who owns it and how far its
/// completion has been announced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// What the API returns.
    pub batch: BatchObject,
    /// The API key that made the batch (its items run under it, as it is now).
    pub key_id: String,
    /// Who the batch and its files belong to: a tenant key's project
    /// (`project:<id>`), or a config file key's name; empty in records made
    /// before projects owned batches, which belong to `key_id`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// Completion webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// The dispatcher running the batch now (changes when another takes over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// `<ns>.batch.done.<id>` was published (and the webhook called or given up).
    #[serde(default)]
    pub announced: bool,
}

impl BatchRecord {
    /// Who the batch belongs to.
    pub fn owner(&self) -> &str {
        if self.owner.is_empty() {
            &self.key_id
        } else {
            &self.owner
        }
    }
}

/// Where an item sits in its batch; set on the envelope of a batch item. Its
/// answer goes to `<ns>.batch.result.<batch>.<index>` instead of a reply subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchItem {
    /// The batch.
    pub batch_id: String,
    /// The 0-based input line.
    pub index: u32,
    /// The submitter's id for the line.
    pub custom_id: String,
}

impl BatchItem {
    /// The item's request id: the same for every dispatch of the same line, so
    /// a repeated dispatch is one request (and one `Nats-Msg-Id`).
    pub fn request_id(&self) -> Uuid {
        Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("{}/{}", self.batch_id, self.index).as_bytes(),
        )
    }
}

/// An item's answer, published by the worker that finished it (stored, with
/// `Nats-Msg-Id` = `<batch>.<index>`) before it acks the item: the reply frames
/// an interactive client would have received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResult {
    /// The batch.
    pub batch_id: String,
    /// The 0-based input line.
    pub index: u32,
    /// The submitter's id for the line.
    pub custom_id: String,
    /// The request id of the call (also in ClickHouse).
    pub request_id: Uuid,
    /// The frames, ending with the final frame.
    pub frames: Vec<ReplyFrame>,
    /// The usage event of the call that produced the answer, stored with it:
    /// a worker that finds the item answered after a crash publishes it again
    /// (deduplicated by its event id), so the answer is never unbilled.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::legacy::optional_usage_event"
    )]
    pub usage: Option<UsageEvent>,
}

impl BatchResult {
    /// True when the item ended with an error.
    pub fn failed(&self) -> bool {
        match self.frames.last() {
            Some(ReplyFrame::Final(f)) => f.error.is_some(),
            _ => true,
        }
    }
}

/// Published (stored) on `<ns>.batch.done.<id>` when a batch reaches a final status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchDone {
    /// The batch as it ended.
    pub batch: BatchObject,
}
