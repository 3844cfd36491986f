//! The batch dispatcher: takes jobs from `<ns>.batch.submit` (durable consumer
//! `dispatcher`, shared by every replica) and runs each batch to its end.
//!
//! A job's message stays unacked while its batch runs (in-progress acks every
//! few seconds); if its dispatcher dies, JetStream hands the job to another
//! (or the restarted one) after [`sy_bus::JOB_ACK_WAIT`], which resumes it:
//!
//! 1. the batch record is created if the job came from a native client (its
//!    input checked; a bad one ends the batch `failed`), then claimed by
//!    writing this runner's name into it (compare-and-set on the revision);
//! 2. the results already stored for the batch are read, and every item
//!    without one is dispatched, at most `[batch] window` at a time, routed
//!    exactly like an interactive request, to the batch request stream. An
//!    item's request id (and so its `Nats-Msg-Id`) is derived from the batch
//!    and line, so an item dispatched again by a resumed runner is dropped as
//!    a duplicate, and a worker skips an item whose result is stored already;
//! 3. results are counted as workers store them; the record's counts are
//!    written once a second, and a cancel or the expiry stops dispatching.
//!    Every item's deadline is the batch's expiry, which the worker enforces
//!    (dropping the call and storing an error result); a cancel cancels the
//!    items in flight. Either way the results still missing are waited for at
//!    most [`STOP_GRACE`], so a stopped batch always ends. An item whose
//!    deliveries ran out (`[batch] max_deliver`: its workers stopped on it again
//!    and again) gets an error result from [`answer_exhausted`];
//! 4. the output and error files are written in input order (ids derived from
//!    the batch id, so a resumed finalisation writes the same files), the
//!    record gets its final status, the results are purged, and the end is
//!    announced on `<ns>.batch.done.<id>` and to the webhook.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use sy_protocol::batch::{
    BatchError, BatchErrors, BatchItem, BatchJob, BatchObject, BatchRecord, BatchResult,
    BatchStatus,
};
use sy_protocol::{ApiSurface, ErrorCode, FinalFrame, FrameError, ReplyFrame, now_unix_ms};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::finish::{Outcome, Stop, announce, derived_file_id, finalize};
use super::{FileObject, Stores, input, now_secs};
use crate::admission::{Admission, Hints, admit_parsed};
use crate::error::ApiError;
use crate::state::AppState;

/// Batches running at once across every dispatcher.
const MAX_RUNNING: u32 = sy_config::MAX_RUNNING_BATCHES;

/// How long a cancelled or expired batch waits for the results of the items
/// still in flight (a cancel cancels their calls; at the expiry the workers
/// drop them and store their errors at once).
const STOP_GRACE: Duration = Duration::from_secs(3);

/// How long a job waits, holding its slot, before going to the back of the
/// queue when its key already runs `[batch] max_running_per_key` batches here.
const TURN_WAIT: Duration = Duration::from_secs(2);

/// How often a running batch's record is written and re-read (cancel, takeover).
const TICK: Duration = Duration::from_secs(1);

/// Runs batch jobs until `shutdown`; jobs in hand are handed back (nak) so
/// another dispatcher resumes them at once.
pub(crate) async fn run(state: Arc<AppState>, shutdown: CancellationToken) {
    let Some(stores) = state.batches.clone() else {
        tracing::warn!("No batch storage: the batch dispatcher does not run.");
        return;
    };
    let tracker = TaskTracker::new();
    tracker.spawn(answer_exhausted(state.clone(), shutdown.clone()));
    let mut backoff = Duration::from_millis(200);
    loop {
        match pull(&state, &stores, &tracker, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "Pulling batch jobs failed, retrying.");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                if let Err(e) = state.bus.ensure_batch_streams().await {
                    tracing::debug!(error = %e, "Batch streams not ready yet.");
                }
            }
        }
    }
    tracker.close();
    tracker.wait().await;
}

async fn pull(
    state: &Arc<AppState>,
    stores: &Arc<Stores>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let consumer = state
        .bus
        .ensure_dispatcher_consumer(MAX_RUNNING)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!("Batch dispatcher pulling jobs.");
    sy_bus::pull_each(&consumer, 4, shutdown.cancelled(), |msg| {
        let (state, stores, stop) = (state.clone(), stores.clone(), shutdown.clone());
        tracker.spawn(async move { job(state, stores, msg, stop).await });
    })
    .await
}

/// Gives an error result to every batch item whose deliveries ran out (its
/// workers stopped on it `[batch] max_deliver` times, or could never store its
/// result), which JetStream would otherwise keep unanswered while its batch
/// waits: the item is taken off the stream and its batch told. (Every
/// dispatcher hears the announcement; the result stream keeps one result per
/// item.) An item announced while no dispatcher runs waits for the batch's
/// expiry.
async fn answer_exhausted(state: Arc<AppState>, shutdown: CancellationToken) {
    #[derive(serde::Deserialize)]
    struct Advisory {
        stream_seq: u64,
        deliveries: u64,
    }
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut advisories = match state.bus.follow_exhausted_batch_items().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "Not following exhausted batch items yet.");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = advisories.next() => match m {
                    Some(m) => m,
                    None => break,
                },
            };
            let Ok(a) = serde_json::from_slice::<Advisory>(&msg.payload) else {
                continue;
            };
            let payload = match state.bus.batch_request(a.stream_seq).await {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, seq = a.stream_seq, "An exhausted batch item could not be read; it waits for its batch's expiry.");
                    continue;
                }
            };
            let Ok(sy_protocol::EnvelopeHead {
                batch: Some(item), ..
            }) = serde_json::from_slice(&payload)
            else {
                continue;
            };
            tracing::warn!(batch = %item.batch_id, index = item.index, deliveries = a.deliveries, "Batch item's deliveries ran out; answered with an error.");
            let error = FrameError::new(
                sy_protocol::ErrorCode::Internal,
                format!(
                    "The request could not be run: its {} deliveries to a worker all ended without an answer.",
                    a.deliveries
                ),
            );
            if let Err(e) = state
                .bus
                .publish_batch_result(&error_result(item, error))
                .await
            {
                tracing::warn!(error = %e, "Storing an exhausted item's result failed; it waits for its batch's expiry.");
                continue;
            }
            // Answered: off the stream (where nothing would deliver it again).
            if let Err(e) = state.bus.drop_batch_request(a.stream_seq).await {
                tracing::debug!(error = %e, "Removing an exhausted item failed.");
            }
        }
    }
}

async fn job(state: Arc<AppState>, stores: Arc<Stores>, msg: Message, stop: CancellationToken) {
    let running = &sy_telemetry::metrics::get().batches_running;
    running.inc();
    // Down again however the job ends.
    let _running = Running(running);
    let (seq, delivered) = msg
        .info()
        .map(|i| (i.stream_sequence, i.delivered))
        .unwrap_or((0, 1));
    let (msg, acker) = msg.split();
    let acker = Arc::new(acker);
    let job: BatchJob = match serde_json::from_slice(&msg.payload) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, "Dropping an unreadable batch job.");
            let _ = acker.ack_with(AckKind::Term).await;
            return;
        }
    };
    let id = job.id.clone().unwrap_or_else(|| {
        let ns = state.bus.subjects().namespace();
        format!(
            "batch_{}",
            Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{ns}/job/{seq}").as_bytes()).simple()
        )
    });
    if !sy_protocol::is_valid_token(&id) {
        tracing::error!(batch = %id, "Dropping a batch job whose id is not a plain token.");
        let _ = acker.ack_with(AckKind::Term).await;
        return;
    }
    // One key runs at most `max_running_per_key` batches in this process; its
    // others go to the back of the queue, so that every key gets its turn.
    let Some(_turn) = stores.take_turn(&job.key_id) else {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(TURN_WAIT) => {}
        }
        let mut again = job;
        again.id = Some(id.clone());
        let requeued = state
            .bus
            .publish_batch_job(&again, &format!("{id}/turn/{seq}"))
            .await;
        match requeued {
            Ok(()) => {
                tracing::debug!(batch = %id, key = %again.key_id, "Batch waits for its key's turn.");
                let _ = acker.ack().await;
            }
            Err(e) => {
                tracing::warn!(batch = %id, error = %e, "Requeueing a waiting batch failed.");
                let _ = acker
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
        }
        return;
    };
    let runner = format!("{}/{}", state.ingress_id, delivered);
    // Keep the job ours while the batch runs.
    let alive = CancellationToken::new();
    let beat = {
        let alive = alive.clone();
        let acker = acker.clone();
        tokio::spawn(async move {
            let every = sy_bus::JOB_ACK_WAIT / 3;
            loop {
                tokio::select! {
                    _ = alive.cancelled() => return,
                    _ = tokio::time::sleep(every) => {
                        let _ = acker.ack_with(AckKind::Progress).await;
                    }
                }
            }
        })
    };
    let span = tracing::info_span!("batch", batch = %id, runner = %runner);
    let outcome =
        tracing::Instrument::instrument(drive(&state, &stores, &job, &id, &runner, &stop), span)
            .await;
    alive.cancel();
    let _ = beat.await;
    match outcome {
        Outcome::Done => {
            if let Err(e) = acker.ack().await {
                tracing::warn!(batch = %id, error = %e, "Acking a finished batch job failed.");
            }
        }
        Outcome::Retry(why) => {
            tracing::info!(batch = %id, %why, "Batch handed back for another run.");
            let _ = acker
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
        Outcome::Abandon => tracing::info!(batch = %id, "Another runner took the batch over."),
    }
}

async fn drive(
    state: &Arc<AppState>,
    stores: &Stores,
    job: &BatchJob,
    id: &str,
    runner: &str,
    stop: &CancellationToken,
) -> Outcome {
    let (mut record, mut revision) = match tryo!(stores.record(id).await) {
        Some(r) => r,
        None => match tryo!(create_native(state, stores, job, id).await) {
            Some(r) => r,
            None => return Outcome::Retry("record created concurrently".into()),
        },
    };
    if record.batch.status.is_terminal() {
        return announce(state, stores, record, revision).await;
    }
    // Claim the batch.
    loop {
        record.runner = Some(runner.to_owned());
        match tryo!(stores.save(&record, revision).await) {
            Some(r) => {
                revision = r;
                break;
            }
            None => match tryo!(stores.record(id).await) {
                Some((r, rev)) if !r.batch.status.is_terminal() => (record, revision) = (r, rev),
                Some((r, rev)) => return announce(state, stores, r, rev).await,
                None => return Outcome::Done,
            },
        }
    }
    let data = tryo!(stores.file_content(&record.batch.input_file_id).await);
    let lines = match input::parse(&data, &record.batch.endpoint, u64::MAX) {
        Ok(l) => l,
        Err(e) => {
            // Checked when the batch was created; the file changed since.
            record.batch.errors = Some(BatchErrors {
                object: "list".into(),
                data: vec![e],
            });
            record.batch.set_status(BatchStatus::Failed, now_secs());
            return match tryo!(stores.save(&record, revision).await) {
                Some(rev) => announce(state, stores, record, rev).await,
                None => Outcome::Retry("record changed".into()),
            };
        }
    };
    let n = lines.len();
    if record.batch.status == BatchStatus::Validating {
        record.batch.set_status(BatchStatus::InProgress, now_secs());
        record.batch.request_counts.total = n as u64;
        if tryo!(stores.save(&record, revision).await).is_none() {
            return Outcome::Retry("record changed while starting".into());
        }
        tracing::info!(items = n, "Batch started.");
    }
    let surface = surface_of(&record.batch.endpoint);
    let (stored, mut results) = tryo!(state.bus.follow_batch_results(id).await);
    // 0: no result yet; 1: answered; 2: failed.
    let mut done = vec![0u8; n];
    let mark = |payload: &[u8], done: &mut Vec<u8>| -> Option<u32> {
        let r: BatchResult = serde_json::from_slice(payload).ok()?;
        let slot = done.get_mut(r.index as usize)?;
        if *slot == 0 {
            *slot = if r.failed() { 2 } else { 1 };
        }
        Some(r.index)
    };
    for _ in 0..stored {
        match results.next().await {
            Some(Ok(m)) => {
                mark(&m.payload, &mut done);
            }
            Some(Err(e)) => return Outcome::Retry(format!("reading results: {e}")),
            None => return Outcome::Retry("results ended".into()),
        }
    }
    let window = stores.config.window as usize;
    let expires_ms = record.batch.expires_at.unwrap_or(u64::MAX / 2000) * 1000;
    let mut stopping = None;
    // When a stopped batch ends without the results still missing.
    let mut stop_by = u64::MAX;
    let mut in_flight: HashSet<u32> = HashSet::new();
    let mut next = 0usize;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
    let mut progress = Progress { counted: 0 };
    if record.batch.status == BatchStatus::Cancelling {
        stopping = Some(Stop::Cancelled);
        stop_by = now_unix_ms() + STOP_GRACE.as_millis() as u64;
    }
    loop {
        if stopping.is_none() && now_unix_ms() >= expires_ms {
            stopping = Some(Stop::Expired);
            stop_by = now_unix_ms() + STOP_GRACE.as_millis() as u64;
        }
        while stopping.is_none() && in_flight.len() < window && next < n {
            let i = next;
            if done[i] != 0 {
                next += 1;
                continue;
            }
            stores.pace().await;
            let item = BatchItem {
                batch_id: id.to_owned(),
                index: i as u32,
                custom_id: lines[i].custom_id.clone(),
            };
            match dispatch(state, surface, &record, &lines[i].body, item, expires_ms).await {
                Ok(()) => {}
                Err(NotYet::Budget(why)) => {
                    tracing::debug!(why, "A batch item waits for its budget.");
                    break;
                }
                Err(NotYet::Bus(e)) => {
                    tracing::warn!(error = %e, "Dispatching a batch item failed; retrying.");
                    break;
                }
            }
            in_flight.insert(i as u32);
            next += 1;
        }
        let all_sent = next >= n || stopping.is_some();
        if in_flight.is_empty() && all_sent {
            break;
        }
        if now_unix_ms() >= stop_by {
            tracing::info!(
                missing = in_flight.len(),
                "Batch stopped; results still missing are not waited for."
            );
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => return Outcome::Retry("dispatcher shutting down".into()),
            m = results.next() => match m {
                Some(Ok(m)) => {
                    if let Some(i) = mark(&m.payload, &mut done) {
                        in_flight.remove(&i);
                    }
                }
                Some(Err(e)) => return Outcome::Retry(format!("reading results: {e}")),
                None => return Outcome::Retry("results ended".into()),
            },
            _ = tick.tick() => {
                let Some((mut now, rev)) = tryo!(stores.record(id).await) else {
                    return Outcome::Done;
                };
                if now.runner.as_deref() != Some(runner) {
                    return Outcome::Abandon;
                }
                if now.batch.status == BatchStatus::Cancelling && stopping.is_none() {
                    tracing::info!(in_flight = in_flight.len(), "Batch cancelled: dispatching stopped, items in flight cancelled.");
                    stopping = Some(Stop::Cancelled);
                    stop_by = now_unix_ms() + STOP_GRACE.as_millis() as u64;
                    cancel_in_flight(state, id, &lines, &in_flight).await;
                }
                now.batch.request_counts = counts(&done);
                let c = &now.batch.request_counts;
                progress.left(c.total.saturating_sub(c.completed + c.failed));
                if tryo!(stores.save(&now, rev).await).is_some() {
                    record = now;
                }
            }
        }
    }
    finalize(state, stores, id, runner, &lines, surface, stopping).await
}

/// Asks the workers to drop the calls of the items in flight (at most once
/// each; an item not taken yet is dropped when it is).
async fn cancel_in_flight(
    state: &AppState,
    id: &str,
    lines: &[input::Line],
    in_flight: &HashSet<u32>,
) {
    for &i in in_flight {
        let item = item_of(id, lines, i);
        let cancel = sy_protocol::Cancel {
            request_id: item.request_id(),
            reason: sy_protocol::CancelReason::BatchCancelled,
        };
        if let Err(e) = state.bus.publish_cancel(&cancel).await {
            tracing::debug!(error = %e, "Cancelling a batch item failed.");
        }
    }
}

fn item_of(id: &str, lines: &[input::Line], i: u32) -> BatchItem {
    BatchItem {
        batch_id: id.to_owned(),
        index: i,
        custom_id: lines
            .get(i as usize)
            .map(|l| l.custom_id.clone())
            .unwrap_or_default(),
    }
}

/// An item's result that is only an error.
pub(crate) fn error_result(item: BatchItem, error: FrameError) -> BatchResult {
    BatchResult {
        request_id: item.request_id(),
        batch_id: item.batch_id,
        index: item.index,
        custom_id: item.custom_id,
        frames: vec![ReplyFrame::Final(FinalFrame {
            seq: 0,
            start: None,
            finish_reason: None,
            usage: None,
            error: Some(error),
        })],
        usage: None,
    }
}

fn counts(done: &[u8]) -> sy_protocol::batch::RequestCounts {
    sy_protocol::batch::RequestCounts {
        total: done.len() as u64,
        completed: done.iter().filter(|&&d| d == 1).count() as u64,
        failed: done.iter().filter(|&&d| d == 2).count() as u64,
    }
}

fn surface_of(endpoint: &str) -> ApiSurface {
    if endpoint == "/v1/embeddings" {
        ApiSurface::Embeddings
    } else {
        ApiSurface::ChatCompletions
    }
}

/// Routes one item like an interactive request, reserves its largest cost
/// against its key's budgets (never lowering its `max_tokens`), and queues it; an item that fails before a
/// provider would be called (a bad body, an unknown model, over its budget)
/// gets its error stored as its result right away. An error here (the bus,
/// budgets that cannot be checked now, or a budget held by requests in
/// flight) leaves the item to be sent again.
async fn dispatch(
    state: &Arc<AppState>,
    surface: ApiSurface,
    record: &BatchRecord,
    body: &serde_json::value::RawValue,
    item: BatchItem,
    expires_ms: u64,
) -> Result<(), NotYet> {
    let stored = |result: BatchResult| async move {
        state
            .bus
            .publish_batch_result(&result)
            .await
            .map_err(NotYet::Bus)
    };
    let request_id = item.request_id();
    // The batch runs under its key as the key is now: a revoked key's
    // items fail, a narrowed scope holds.
    let Some(caller) = state.caller_by_key_id(&record.key_id) else {
        let e = FrameError::new(
            ErrorCode::Unauthenticated,
            "The batch's API key was revoked or removed.",
        );
        return stored(error_result(item, e)).await;
    };
    let body = body.get().as_bytes();
    let failed = |e: ApiError| error_result(item.clone(), FrameError::new(e.code, e.message));
    let (request, payload) = match crate::admission::parse(surface, body) {
        Ok(parsed) => parsed,
        Err(e) => return stored(failed(e)).await,
    };
    // A pipeline runs its earlier steps first (as interactive requests); its
    // last step is the item. Its result, or its failed step's error, comes
    // to the batch like any item's.
    if payload.is_none()
        && let Some(p) = state.pipeline(&request.model)
    {
        tokio::spawn(crate::pipeline::run_batch_item(
            state.clone(),
            surface,
            caller,
            request,
            p,
            item,
            expires_ms,
        ));
        return Ok(());
    }
    if let Err(e) = caller.may_use(&request.model) {
        return stored(failed(e)).await;
    }
    let admission = Admission {
        request_id,
        caller: &caller,
        hints: Hints::default(),
        received_unix_ms: now_unix_ms(),
        deadline_unix_ms: expires_ms,
        batch: Some(item.clone()),
    };
    let mut envelope = match admit_parsed(state, surface, request, payload, admission) {
        Ok(p) => p.envelope,
        Err((e, _)) => return stored(failed(e)).await,
    };
    if let Some(limits) = &state.rate_limits {
        match limits.admit(&caller, &mut envelope, body.len(), None).await {
            Ok(granted) => envelope.limits = granted.ticket,
            // Budgets that cannot be checked now (their store is away, or
            // being restored): the item waits and is sent again.
            Err(e) if e.code == ErrorCode::Overloaded => return Err(NotYet::Budget(e.message)),
            Err(e) => {
                return stored(error_result(item, FrameError::new(e.code, e.message))).await;
            }
        }
    }
    if let Err(e) = state.bus.publish_request(&envelope, None).await {
        if let (Some(r), Some(ticket)) = (&state.rate_limits, envelope.limits.take()) {
            r.give_back(envelope.request_id, ticket);
        }
        return Err(NotYet::Bus(e));
    }
    Ok(())
}

/// Why an item was not sent (it is sent again later).
enum NotYet {
    /// The bus did not take it (or its result).
    Bus(sy_bus::BusError),
    /// Its budgets cannot be checked now, or are held by requests in flight.
    Budget(String),
}

/// Creates the record of a job submitted on the bus (the HTTP API creates its
/// own): checks it and its input, and stores inline requests as a file. A bad
/// job is a `failed` batch with the reason in `errors`.
async fn create_native(
    state: &AppState,
    stores: &Stores,
    job: &BatchJob,
    id: &str,
) -> Result<Option<(BatchRecord, u64)>, String> {
    let mut problem: Option<BatchError> = None;
    fn fail(problem: &mut Option<BatchError>, code: &str, message: String) {
        problem.get_or_insert(BatchError {
            code: code.into(),
            message,
            param: None,
            line: None,
        });
    }
    let caller = state.caller_by_key_id(&job.key_id);
    // Files and the batch belong to the key's project (or the file key).
    let owner = caller
        .as_ref()
        .map_or_else(|| job.key_id.clone(), crate::extract::Caller::owner);
    if caller.is_none() {
        fail(
            &mut problem,
            "invalid_key",
            format!("key_id '{}' names no live API key.", job.key_id),
        );
    }
    if let Err(e) = super::check_job(job, &stores.config.webhook_allow) {
        fail(&mut problem, "invalid_request", e.message);
    }
    let mut total = 0;
    let input_file_id = match (&job.input_file_id, job.requests.is_empty()) {
        (Some(f), true) => f.clone(),
        (None, false) => {
            let mut data = Vec::new();
            for r in &job.requests {
                data.extend(serde_json::to_vec(r).map_err(|e| e.to_string())?);
                data.push(b'\n');
            }
            let file = FileObject::new(
                derived_file_id(id, "input"),
                data.len() as u64,
                format!("{id}_input.jsonl"),
                "batch",
            );
            stores.put_file(&file, &owner, &data).await?;
            file.id
        }
        _ => {
            fail(
                &mut problem,
                "invalid_request",
                "A job names an input_file_id or carries requests, not both and not neither."
                    .into(),
            );
            String::new()
        }
    };
    if problem.is_none() {
        match stores.file(&input_file_id, &owner).await? {
            None => fail(
                &mut problem,
                "invalid_input_file",
                format!("No file {input_file_id} belongs to key '{}'.", job.key_id),
            ),
            Some(_) => {
                let data = stores.file_content(&input_file_id).await?;
                match input::parse(&data, &job.endpoint, stores.config.max_lines) {
                    Ok(lines) => total = lines.len() as u64,
                    Err(e) => problem = Some(e),
                }
            }
        }
    }
    let mut batch = BatchObject::new(id.to_owned(), job, input_file_id, now_secs());
    batch.request_counts.total = total;
    if let Some(p) = problem {
        tracing::info!(batch = %id, error = %p.message, "Batch job refused.");
        batch.errors = Some(BatchErrors {
            object: "list".into(),
            data: vec![p],
        });
        batch.set_status(BatchStatus::Failed, now_secs());
    }
    let record = BatchRecord {
        batch,
        key_id: job.key_id.clone(),
        owner,
        webhook_url: job.webhook_url.clone(),
        runner: None,
        announced: false,
    };
    Ok(stores.create(&record).await?.map(|rev| (record, rev)))
}

/// This job's share of `switchyard_batch_items_pending`: the items it has
/// not ended, as of its last tick; given back when it is dropped.
struct Progress {
    counted: i64,
}

impl Progress {
    fn left(&mut self, items: u64) {
        let items = i64::try_from(items).unwrap_or(i64::MAX);
        sy_telemetry::metrics::get()
            .batch_items_pending
            .inc_by(items - self.counted);
        self.counted = items;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        sy_telemetry::metrics::get()
            .batch_items_pending
            .dec_by(self.counted);
    }
}

/// Counts a batch job out of `switchyard_batches_running` when dropped.
struct Running<'a>(&'a sy_telemetry::metrics::Gauge);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
