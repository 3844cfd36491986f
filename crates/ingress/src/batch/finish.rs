//! A batch's end: its output and error files written in input order (ids
//! derived from the batch id, so a resumed finalisation writes the same
//! files), its final status, and the announcement on `<ns>.batch.done.<id>`
//! and to the webhook, once.

use futures::StreamExt;
use sy_protocol::ApiSurface;
use sy_protocol::batch::{BatchDone, BatchItem, BatchRecord, BatchResult, BatchStatus};
use uuid::Uuid;

use super::{FileObject, Stores, input, now_secs, output, webhook};
use crate::state::AppState;

/// A file id derived from the batch (`input`, `output`, `errors`): the same
/// whenever a resumed run writes that file again.
pub(super) fn derived_file_id(batch_id: &str, what: &str) -> String {
    format!(
        "file-{}",
        Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("{batch_id}/{what}").as_bytes()
        )
        .simple()
    )
}

/// How a run of a job ended.
pub(super) enum Outcome {
    /// The batch ended and was announced: ack the job.
    Done,
    /// Try again later (here or on another dispatcher): nak.
    Retry(String),
    /// Another runner owns the batch now: leave the job alone.
    Abandon,
}

/// Why a running batch stops dispatching before its last item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    Cancelled,
    Expired,
}

/// Writes the output and error files, gives the batch its final status, and announces it.
pub(super) async fn finalize(
    state: &AppState,
    stores: &Stores,
    id: &str,
    runner: &str,
    lines: &[input::Line],
    surface: ApiSurface,
    stopping: Option<Stop>,
) -> Outcome {
    let n = lines.len();
    if stopping.is_none() {
        let Some((mut record, rev)) = tryo!(stores.record(id).await) else {
            return Outcome::Done;
        };
        if record.runner.as_deref() != Some(runner) {
            return Outcome::Abandon;
        }
        record.batch.set_status(BatchStatus::Finalizing, now_secs());
        if tryo!(stores.save(&record, rev).await).is_none() {
            return Outcome::Retry("record changed while finalizing".into());
        }
    }
    let (stored, mut results) = tryo!(state.bus.follow_batch_results(id).await);
    let mut by_index: Vec<Option<BatchResult>> = (0..n).map(|_| None).collect();
    for _ in 0..stored {
        match results.next().await {
            Some(Ok(m)) => {
                if let Ok(r) = serde_json::from_slice::<BatchResult>(&m.payload)
                    && let Some(slot) = by_index.get_mut(r.index as usize)
                    && slot.is_none()
                {
                    *slot = Some(r);
                }
            }
            Some(Err(e)) => return Outcome::Retry(format!("reading results: {e}")),
            None => return Outcome::Retry("results ended".into()),
        }
    }
    drop(results);
    let (code, why) = match stopping {
        Some(Stop::Expired) => (
            "batch_expired",
            "The batch expired before this request could be run.",
        ),
        _ => (
            "batch_cancelled",
            "The batch was cancelled before this request completed.",
        ),
    };
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut counts = sy_protocol::batch::RequestCounts {
        total: n as u64,
        ..Default::default()
    };
    for (i, slot) in by_index.iter().enumerate() {
        match slot {
            Some(r) => {
                let base64 = surface == ApiSurface::Embeddings
                    && serde_json::from_str::<serde_json::Value>(lines[i].body.get())
                        .ok()
                        .is_some_and(|v| v["encoding_format"] == "base64");
                let (line, failed) = output::line(surface, r, base64);
                if failed {
                    counts.failed += 1;
                    err.extend(line);
                    err.push(b'\n');
                } else {
                    counts.completed += 1;
                    out.extend(line);
                    out.push(b'\n');
                }
            }
            None => {
                let item = BatchItem {
                    batch_id: id.to_owned(),
                    index: i as u32,
                    custom_id: lines[i].custom_id.clone(),
                };
                err.extend(output::not_run(
                    &item.custom_id,
                    item.request_id(),
                    code,
                    why,
                ));
                err.push(b'\n');
            }
        }
    }
    let Some((mut record, _)) = tryo!(stores.record(id).await) else {
        return Outcome::Done;
    };
    let mut files = [(None, "output", &out), (None, "errors", &err)];
    for (slot, what, data) in &mut files {
        if data.is_empty() {
            continue;
        }
        let file = FileObject::new(
            derived_file_id(id, what),
            data.len() as u64,
            format!("{id}_{what}.jsonl"),
            "batch_output",
        );
        tryo!(stores.put_file(&file, record.owner(), data).await);
        *slot = Some(file.id);
    }
    let [(output_file_id, _, _), (error_file_id, _, _)] = files;
    let status = match stopping {
        Some(Stop::Cancelled) => BatchStatus::Cancelled,
        Some(Stop::Expired) => BatchStatus::Expired,
        None => BatchStatus::Completed,
    };
    let revision = loop {
        let Some((mut now, rev)) = tryo!(stores.record(id).await) else {
            return Outcome::Done;
        };
        if now.runner.as_deref() != Some(runner) {
            return Outcome::Abandon;
        }
        now.batch.output_file_id.clone_from(&output_file_id);
        now.batch.error_file_id.clone_from(&error_file_id);
        now.batch.request_counts = counts;
        now.batch.set_status(status, now_secs());
        if let Some(r) = tryo!(stores.save(&now, rev).await) {
            record = now;
            break r;
        }
    };
    tracing::info!(
        status = status.as_str(),
        completed = counts.completed,
        failed = counts.failed,
        "Batch ended."
    );
    let m = sy_telemetry::metrics::get();
    m.batches
        .get_or_create(&[("status", status.as_str().to_owned())])
        .inc();
    for (outcome, n) in [("completed", counts.completed), ("failed", counts.failed)] {
        m.batch_items
            .get_or_create(&[("outcome", outcome.to_owned())])
            .inc_by(n);
    }
    if let Err(e) = state.bus.purge_batch_results(id).await {
        tracing::warn!(error = %e, "Purging batch results failed; they expire on their own.");
    }
    announce(state, stores, record, revision).await
}

/// Publishes `<ns>.batch.done.<id>` and calls the webhook, once per batch.
pub(super) async fn announce(
    state: &AppState,
    stores: &Stores,
    mut record: BatchRecord,
    revision: u64,
) -> Outcome {
    if record.announced {
        return Outcome::Done;
    }
    let done = BatchDone {
        batch: record.batch.clone(),
    };
    if let Err(e) = state.bus.publish_batch_done(&done).await {
        return Outcome::Retry(format!("announcing: {e}"));
    }
    if let Some(url) = &record.webhook_url {
        let secret = stores.config.webhook_secret.as_ref().map(|s| s.expose());
        let allow = &stores.config.webhook_allow;
        record.batch.webhook = Some(webhook::deliver(url, allow, secret, &record.batch).await);
    }
    record.announced = true;
    match stores.save(&record, revision).await {
        Ok(_) => Outcome::Done,
        Err(e) => Outcome::Retry(e),
    }
}
