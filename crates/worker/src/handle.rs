use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{self, AckKind};
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use sy_bus::Bus;
use sy_config::ProviderConfig;
use sy_protocol::batch::BatchResult;
use sy_protocol::chat::Usage;
use sy_protocol::embeddings::{EmbeddingFrame, EmbeddingsRequest};
use sy_protocol::{
    CancelReason, ChunkFrame, ErrorCode, FallbackTarget, FinalFrame, FrameError, MidStream,
    ReplyFrame, RequestEnvelope, Resume, StartInfo, UsageEvent, UsageStatus, now_unix_ms,
};
use sy_providers::{AnyProvider, CallContext, Provider, ProviderError, ResponseMeta};
use sy_router::Live;
use sy_router::live::LiveTable;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::CancelRegistry;
use crate::done::Mark;
use crate::usage::{self, Ended};

/// What every request of one provider pool shares.
pub(crate) struct Shared {
    pub bus: Bus,
    pub provider: ProviderConfig,
    pub adapter: AnyProvider,
    pub cancels: CancelRegistry,
    pub progress_every: Duration,
    pub worker_id: String,
    pub markup_ppb: i64,
    /// Every provider entry (context windows for fallback choices).
    pub all_providers: Arc<BTreeMap<String, ProviderConfig>>,
    /// Live target health, shared with every ingress through observations.
    pub live: Arc<LiveTable>,
    /// Billed price of a batch item relative to an interactive call, ppb.
    pub batch_price_ppb: i64,
    /// Deliveries of a batch item before JetStream gives it up (`[batch] max_deliver`).
    pub batch_max_deliver: u32,
    /// Batch items whose result could not be stored: nak'd, not acked.
    pub unsettled: std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>,
    /// Completion marks of interactive requests (see `done`).
    pub done: Arc<crate::done::DoneMarks>,
    /// Request messages this process is handling now (by message id).
    pub in_hand: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// A message in hand; forgotten when dropped.
struct InHand<'a>(&'a Shared, String);

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        if let Ok(mut h) = self.0.in_hand.lock() {
            h.remove(&self.1);
        }
    }
}

/// What an attempt learned, kept outside the call so that it survives a cancel.
#[derive(Debug, Default)]
pub(crate) struct AttemptState {
    pub reached_provider: bool,
    pub first_token_unix_ms: Option<u64>,
    pub served_model: Option<String>,
    pub usage: Option<Usage>,
    pub finish_reason: Option<String>,
    /// Generated text (content, refusals, tool arguments), for estimates only.
    pub output_text: String,
    /// Choice 0's content as sent to the client by this attempt.
    pub content: String,
    /// The answer had more than plain text of one choice (tool calls, a
    /// refusal, several choices): a cut cannot be recovered.
    pub not_plain: bool,
    /// A regenerated continuation did not reproduce what the client had.
    pub diverged: bool,
    pub error: Option<FrameError>,
}

/// How a continued stream's content is fitted to what the client already has.
#[derive(Debug)]
pub(crate) enum Fit {
    /// A fresh answer: nothing to fit.
    Fresh,
    /// The target continues an assistant prefill that lost its trailing
    /// whitespace (`ws`); the continuation's copy of it is dropped once.
    Prefill { ws: String },
    /// The target answers anew: its output is held back until it reproduced
    /// `text` exactly, then the rest flows.
    Splice { text: String, matched: usize },
}

impl Fit {
    /// The part of `piece` to send on; `None` when the answer diverged.
    pub(crate) fn take<'p>(&mut self, piece: &'p str) -> Option<&'p str> {
        match self {
            Fit::Fresh => Some(piece),
            Fit::Prefill { ws } => {
                if piece.is_empty() {
                    return Some(piece);
                }
                let out = piece.strip_prefix(ws.as_str()).unwrap_or(piece);
                ws.clear();
                Some(out)
            }
            Fit::Splice { text, matched } => {
                let rest = &text[*matched..];
                if rest.is_empty() {
                    Some(piece)
                } else if rest.starts_with(piece) {
                    *matched += piece.len();
                    Some("")
                } else if let Some(tail) = piece.strip_prefix(rest) {
                    *matched = text.len();
                    Some(tail)
                } else {
                    None
                }
            }
        }
    }

    /// False while a splice has not yet reproduced everything sent.
    pub(crate) fn caught_up(&self) -> bool {
        match self {
            Fit::Splice { text, matched } => *matched == text.len(),
            _ => true,
        }
    }
}

/// Attempt numbers of a redelivered message start this far above the original
/// delivery's, so a call made after a worker crash never reuses a usage event id.
const ATTEMPT_STRIDE: u32 = 16;

/// Handles one pulled message from start to ack.
pub(crate) async fn handle(cx: Arc<Shared>, msg: jetstream::Message) {
    let dispatched_unix_ms = now_unix_ms();
    let delivered = msg.info().map_or(1, |i| i.delivered.max(1));
    let (msg, acker) = msg.split();
    let env: RequestEnvelope = match serde_json::from_slice(&msg.payload) {
        Ok(env) => env,
        Err(e) => {
            tracing::error!(subject = %msg.subject, error = %e, "Refusing an unreadable request envelope.");
            answer_unreadable(&cx.bus, &msg.payload).await;
            let _ = acker.ack_with(AckKind::Term).await;
            return;
        }
    };
    let span = tracing::debug_span!(
        "worker.request",
        request_id = %env.request_id,
        provider = %cx.provider.name,
        model = %env.model,
        attempt = env.attempt,
    );
    // The message's identity: a fallback's republish is another message.
    let message_id = UsageEvent::event_id_of(env.request_id, env.attempt);
    async move {
        tracing::trace!("Request pulled.");
        let fresh = cx
            .in_hand
            .lock()
            .map(|mut h| h.insert(message_id.clone()))
            .unwrap_or(true);
        if !fresh {
            // Redelivered while this process still handles it (its progress
            // acks were lost, e.g. in a NATS outage): the first handling acks
            // it; leaving this delivery alone keeps it safe if we die first.
            tracing::debug!(delivered, "Redelivered request is still in hand here; left to the first handling.");
            return;
        }
        let _in_hand = InHand(&cx, message_id.clone());
        if env.batch.is_none()
            && delivered > 1
            && let Mark::Done(event) = cx.done.get(&message_id).await
        {
            // Finished before; only the ack was lost (a reconnect, a crash).
            tracing::debug!(delivered, "Redelivered request was finished already; acked without a call.");
            if let Some(event) = event {
                usage::publish(&cx.bus, &event, &acker).await;
            }
            let _ = acker.ack().await;
            return;
        }
        if let Some(item) = &env.batch {
            // A worker that stored the answer and died before acking: the item
            // is done, and its usage event (stored with the answer) is
            // published again in case the crash came before it was (the
            // usage stream and ClickHouse keep one per event id).
            match cx.bus.batch_result_usage(&item.batch_id, item.index).await {
                Ok(Some(stored)) => {
                    tracing::debug!(batch = %item.batch_id, index = item.index, "Batch item already answered.");
                    if let Some(event) = stored {
                        usage::publish(&cx.bus, &event, &acker).await;
                    }
                    let _ = acker.ack().await;
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot tell whether the batch item ran; retrying later.");
                    let _ = acker.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                    return;
                }
            }
        }
        let first_attempt = env
            .attempt
            .saturating_add((delivered.min(1 << 20) as u32 - 1) * ATTEMPT_STRIDE);
        // Whether the ending wrote its completion mark already (see `done`).
        let marked;
        if dispatched_unix_ms >= env.deadline_unix_ms {
            tracing::debug!("Request expired before a worker took it.");
            let error = FrameError::new(
                ErrorCode::DeadlineExceeded,
                "the request's deadline passed before a worker took it",
            );
            let state = AttemptState {
                error: Some(error.clone()),
                ..AttemptState::default()
            };
            let call = Call::first(first_attempt, &env, dispatched_unix_ms);
            let event = usage::event(&cx, &env, &call, &state, Ended::Expired);
            Replier::new(&cx, &env, first_attempt)
                .fail_billed(error, &event)
                .await;
            marked = finish(&cx, &env, &event, &acker).await;
        } else if let Some(running) = cx.cancels.begin(env.request_id) {
            marked = serve(
                &cx,
                &env,
                &acker,
                &running,
                first_attempt,
                dispatched_unix_ms,
            )
            .await;
        } else {
            tracing::debug!("Request was cancelled before a worker took it.");
            let call = Call::first(first_attempt, &env, dispatched_unix_ms);
            let event = usage::event(&cx, &env, &call, &AttemptState::default(), Ended::Cancelled);
            marked = finish(&cx, &env, &event, &acker).await;
        }
        let unsettled = env.batch.is_some()
            && cx
                .unsettled
                .lock()
                .map(|mut u| u.remove(&env.request_id))
                .unwrap_or(false);
        if unsettled {
            // Its answer was not stored: run it again rather than lose it.
            let _ = acker.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            return;
        }
        if env.batch.is_none() && !marked {
            // Ended with an error sent or a fallback republished.
            cx.done.finished(&message_id).await;
        }
        if let Err(e) = acker.ack().await {
            tracing::warn!(error = %e, "Ack failed; the request may be redelivered.");
        }
    }
    .instrument(span)
    .await;
}

/// Answers whoever waits for an envelope that does not parse: the client on
/// its reply subject, or the batch (an error result, so the batch can end).
/// Nothing is answered when not even the envelope's head can be read.
async fn answer_unreadable(bus: &Bus, payload: &[u8]) {
    let head: sy_protocol::EnvelopeHead = match serde_json::from_slice(payload) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "Not even the envelope's head is readable; nobody can be told.");
            return;
        }
    };
    let frame = ReplyFrame::Final(FinalFrame {
        seq: 0,
        start: None,
        finish_reason: None,
        usage: None,
        error: Some(FrameError::new(
            ErrorCode::Internal,
            "the request could not be read by the worker",
        )),
    });
    let sent = match &head.batch {
        Some(item) => {
            let result = BatchResult {
                batch_id: item.batch_id.clone(),
                index: item.index,
                custom_id: item.custom_id.clone(),
                request_id: head.request_id,
                frames: vec![frame],
                usage: None,
            };
            bus.publish_batch_result(&result).await
        }
        None if !head.reply_to.is_empty() => bus.publish_frame(&head.reply_to, &frame).await,
        None => Ok(()),
    };
    if let Err(e) = sent {
        tracing::warn!(request_id = %head.request_id, error = %e, "Answering an unreadable request failed.");
    }
}

/// One call to the provider: its attempt number, when it started, and why it
/// was made (a retry or a fallback).
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub attempt: u32,
    pub started_unix_ms: u64,
    pub reason: Option<String>,
}

impl Call {
    fn first(attempt: u32, env: &RequestEnvelope, started_unix_ms: u64) -> Call {
        Call {
            attempt,
            started_unix_ms,
            reason: env.fallback_reason.clone(),
        }
    }
}

/// What to do after a call failed before any output reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Call the same target again after a backoff (at least this long).
    Retry(Option<Duration>),
    /// Do not call this target again for this request: the next target.
    Fallback,
    /// The client gets this error.
    Final,
}

/// The failure table (docs/reliability.md): 429, overload, 5xx and connections
/// that failed before an answer are retried and then fall back; a target that
/// stayed silent past its timeout, or whose context window is too small, is
/// not called again; refusals and other 4xx are final.
pub(crate) fn next_step(e: &FrameError, fallback_on_refusal: bool) -> Next {
    match e.code {
        ErrorCode::ContentFiltered if fallback_on_refusal => Next::Fallback,
        ErrorCode::RateLimited | ErrorCode::Overloaded => {
            Next::Retry(e.retry_after_ms.map(Duration::from_millis))
        }
        ErrorCode::ProviderError => match e.provider_status {
            None | Some(408 | 500..) => Next::Retry(None),
            Some(_) => Next::Final,
        },
        ErrorCode::ProviderTimeout | ErrorCode::ContextLengthExceeded => Next::Fallback,
        _ => Next::Final,
    }
}

/// Serves one request on this target: calls, retries with backoff, and hands
/// over to the next target when this one cannot answer. Always ends with the
/// client answered (frames on the reply subject), the request republished to a
/// fallback, or the client gone.
async fn serve(
    cx: &Shared,
    env: &RequestEnvelope,
    acker: &Acker,
    running: &crate::cancel::RunningGuard,
    first_attempt: u32,
    dispatched_unix_ms: u64,
) -> bool {
    let cancelled = running.token();
    // Why a cancel came: a client cut off for reading too slowly is not one
    // that went away.
    let cancel_ending = || match running.reason() {
        Some(CancelReason::ReplyBroken) => Ended::CutOff,
        _ => Ended::Cancelled,
    };
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(env.deadline_unix_ms.saturating_sub(now_unix_ms()));
    // A half-open breaker's probe is one call: no retries on the target that
    // just failed its way to a cool-down.
    let probe = cx
        .live
        .at(now_unix_ms())
        .half_open(&cx.provider.name, &env.model);
    let retries = if probe { 0 } else { cx.provider.retries };
    let mut backoff = ExponentialBuilder::new()
        .with_min_delay(RETRY_MIN)
        .with_max_delay(RETRY_MAX)
        .with_jitter()
        .with_max_times(retries as usize)
        .build();
    let mut call = Call::first(first_attempt, env, dispatched_unix_ms);
    if let (Some(r), Some(reason)) = (&env.resume, &mut call.reason) {
        // The usage row says how the stream was continued.
        let kind = if cx.provider.prefill && !r.text.trim_end().is_empty() {
            "prefill"
        } else {
            "splice"
        };
        reason.push_str(&format!(", continued by {kind}"));
    }
    // A target whose breaker is open is not called while another can serve.
    if !env.fallback.is_empty()
        && let Some(why) = cx
            .live
            .at(now_unix_ms())
            .unhealthy(&cx.provider.name, &env.model)
    {
        let reason = format!("{}/{} {why}", cx.provider.name, env.model);
        let error = FrameError::new(ErrorCode::Overloaded, reason.clone());
        fall_back(cx, env, call.attempt, &error, reason, None).await;
        return false;
    }
    loop {
        // Logs of this call carry its own attempt number (the span starts
        // with the envelope's).
        tracing::Span::current().record("attempt", call.attempt);
        let mut state = AttemptState::default();
        let mut replier = Replier::new(cx, env, call.attempt);
        replier.deferred = true;
        let ended = {
            let run = replier.run(&cx.adapter, &cx.provider, &mut state);
            tokio::pin!(run);
            // First progress ack one period from now. (Awaiting an interval's
            // immediate first tick costs a trip through the millisecond timer
            // wheel: ~1 ms of latency on every request.)
            let mut progress = tokio::time::interval_at(
                tokio::time::Instant::now() + cx.progress_every,
                cx.progress_every,
            );
            loop {
                tokio::select! {
                    () = &mut run => break Ended::Done,
                    _ = cancelled.cancelled() => {
                        tracing::debug!(reason = ?running.reason(), "Request cancelled; upstream call dropped.");
                        break cancel_ending();
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        tracing::debug!("Request deadline passed; upstream call dropped.");
                        break Ended::Expired;
                    }
                    _ = progress.tick() => {
                        let _ = acker.ack_with(AckKind::Progress).await;
                    }
                }
            }
            // The upstream call is dropped here at the latest, closing its connection.
        };
        // The ingress holds REPLY_BUFFER_FRAMES of a reply: a stream that long
        // may have been cut off at its last frames, which the ingress's cancel
        // says just after them. Wait a moment for it, so that the usage row
        // says what the client got.
        let ended = if ended == Ended::Done
            && env.batch.is_none()
            && env.request.is_stream()
            && state.error.is_none()
            && replier.seq as usize >= sy_protocol::REPLY_BUFFER_FRAMES
        {
            match tokio::time::timeout(CUT_OFF_GRACE, cancelled.cancelled()).await {
                Ok(()) if running.reason() == Some(CancelReason::ReplyBroken) => Ended::CutOff,
                _ => ended,
            }
        } else {
            ended
        };
        // A batch item's frames are stored only with its final frame: a failed
        // attempt sent nothing, and the next one starts afresh.
        let sent = if env.batch.is_some() { 0 } else { replier.seq };
        let event = usage::event(cx, env, &call, &state, ended);
        // A batch item's answer is stored together with its usage event.
        replier.settle(&event).await;
        if event.status != UsageStatus::Ok {
            tracing::debug!(status = event.status.as_str(), "Attempt did not complete.");
        }
        if let Some(o) = usage::observation(&event, ended) {
            // At most once: a lost observation only delays what routers learn.
            cx.live.observe(&o, now_unix_ms());
            if let Err(e) = cx.bus.publish_observation(&o).await {
                tracing::debug!(error = %e, "Live observation not sent.");
            }
        }
        let error = match (ended, state.error.take()) {
            (Ended::Done, Some(e)) => {
                usage::publish(&cx.bus, &event, acker).await;
                e
            }
            (Ended::Expired, _) if env.batch.is_some() => {
                // The batch waits for every item's result: this one's is the
                // deadline (a cancelled item's is written by the dispatcher).
                let error = FrameError::new(
                    ErrorCode::DeadlineExceeded,
                    "the item's deadline passed before the call ended ([batch] item_timeout or the batch's expiry)",
                );
                Replier::new(cx, env, call.attempt)
                    .fail_billed(error, &event)
                    .await;
                return finish(cx, env, &event, acker).await;
            }
            // Answered, or nobody waits any more.
            _ => return finish(cx, env, &event, acker).await,
        };
        let code = error.code.as_str();
        if sent > 0 {
            // Output reached the client: continue on the next target, or end
            // the client's stream with the error (never like a success).
            // (A refusal is not routed around unless the route says so.)
            let recoverable = env.mid_stream == MidStream::Recover
                && (error.code != ErrorCode::ContentFiltered || env.fallback_on_refusal)
                && !state.not_plain
                && !state.diverged
                && env.request.n.unwrap_or(1) == 1
                && !env.fallback.is_empty();
            if recoverable {
                let before = env.resume.as_ref().map_or("", |r| r.text.as_str());
                let resume = Resume {
                    seq: sent,
                    text: format!("{before}{}", state.content),
                };
                let reason = format!(
                    "mid-stream recovery: {}/{} failed after output: {code}",
                    cx.provider.name, env.model
                );
                fall_back(cx, env, call.attempt, &error, reason, Some(resume)).await;
                return false;
            }
            replier.fail(error).await;
            return false;
        }
        match next_step(&error, env.fallback_on_refusal) {
            Next::Retry(after) => {
                let delay = backoff.next().map(|d| d.max(after.unwrap_or_default()));
                let Some(delay) = delay.filter(|d| tokio::time::Instant::now() + *d < deadline)
                else {
                    let reason = format!("{}/{} failed: {code}", cx.provider.name, env.model);
                    fall_back(cx, env, call.attempt, &error, reason, None).await;
                    return false;
                };
                tracing::debug!(
                    ?delay,
                    code,
                    next_attempt = call.attempt + 1,
                    "Retrying the same target."
                );
                if !wait(delay, cancelled, acker, cx.progress_every).await {
                    return false;
                }
                call = Call {
                    attempt: call.attempt + 1,
                    started_unix_ms: now_unix_ms(),
                    reason: Some(format!("retry after {code}")),
                };
            }
            Next::Fallback => {
                let reason = format!("{}/{} failed: {code}", cx.provider.name, env.model);
                fall_back(cx, env, call.attempt, &error, reason, None).await;
                return false;
            }
            Next::Final => {
                Replier::new(cx, env, call.attempt).fail(error).await;
                return false;
            }
        }
    }
}

/// Ends a request whose client was answered (or is gone): writes the
/// completion mark holding `event`, then publishes the event (see `done`).
/// True when the mark was the ending's (a batch item has none).
async fn finish(cx: &Shared, env: &RequestEnvelope, event: &UsageEvent, acker: &Acker) -> bool {
    let interactive = env.batch.is_none();
    if interactive {
        let message_id = UsageEvent::event_id_of(env.request_id, env.attempt);
        cx.done.answered(&message_id, event).await;
    }
    usage::publish(&cx.bus, event, acker).await;
    interactive
}

/// How long a worker waits after the last frame of a stream long enough to
/// have been cut off for the ingress's cancel saying so.
const CUT_OFF_GRACE: Duration = Duration::from_millis(250);

/// Shortest and longest backoff between retries on one target (with jitter).
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Sleeps `d` unless the client goes away (false), keeping the message in progress.
async fn wait(d: Duration, cancelled: &CancellationToken, acker: &Acker, every: Duration) -> bool {
    let until = tokio::time::Instant::now() + d;
    loop {
        let step = (until - tokio::time::Instant::now()).min(every);
        tokio::select! {
            _ = cancelled.cancelled() => return false,
            _ = tokio::time::sleep(step) => {}
        }
        if tokio::time::Instant::now() >= until {
            return true;
        }
        let _ = acker.ack_with(AckKind::Progress).await;
    }
}

/// Republishes the request to the next target that can serve it (continuing a
/// stream from `resume` when output already reached the client), or, when none
/// is left, gives the client `error`. After a context-length error, targets
/// whose window is known to be no larger are skipped; targets whose breaker is
/// open are skipped unless nothing else is left.
async fn fall_back(
    cx: &Shared,
    env: &RequestEnvelope,
    attempt: u32,
    error: &FrameError,
    reason: String,
    resume: Option<Resume>,
) {
    let resume = resume.or_else(|| env.resume.clone());
    // The client's stream continues at `resume.seq` (or starts at 0).
    let fail = |error: FrameError| async {
        let mut r = Replier::new(cx, env, attempt);
        if let Some(resume) = &resume {
            r.seq = resume.seq;
        }
        r.fail(error).await;
    };
    let window = |p: &str, m: &str| {
        cx.all_providers
            .get(p)
            .and_then(|p| p.models.get(m))
            .and_then(|i| i.context_window)
    };
    let here = window(&cx.provider.name, &env.model);
    let fits = |t: &FallbackTarget| {
        error.code != ErrorCode::ContextLengthExceeded
            || match (here, window(&t.provider, &t.model)) {
                (Some(a), Some(b)) => b > a,
                _ => true,
            }
    };
    let live = cx.live.at(now_unix_ms());
    let candidates: Vec<usize> = (0..env.fallback.len())
        .filter(|&i| fits(&env.fallback[i]))
        .collect();
    let pick = candidates
        .iter()
        .copied()
        .find(|&i| {
            let t = &env.fallback[i];
            live.unhealthy(&t.provider, &t.model).is_none()
        })
        .or_else(|| candidates.first().copied());
    let Some(i) = pick else {
        return fail(error.clone()).await;
    };
    let next = &env.fallback[i];
    let mut out = env.clone();
    out.attempt = attempt + 1;
    out.provider.clone_from(&next.provider);
    out.model.clone_from(&next.model);
    out.fallback = env.fallback[i + 1..].to_vec();
    out.fallback_reason = Some(reason);
    if resume.is_some() {
        out.resume.clone_from(&resume);
    }
    if let Some(choice) = &mut out.choice {
        choice.rank = next.rank;
    }
    tracing::debug!(to = %next.provider, model = %next.model, "Falling back.");
    if let Err(e) = cx.bus.publish_request(&out).await {
        tracing::warn!(error = %e, "Could not hand the request to its fallback.");
        fail(error.clone()).await;
    }
}

/// Publishes one request's frames in order (a batch item's: stores them all
/// with the final frame as its result).
struct Replier<'a> {
    bus: &'a Bus,
    env: &'a RequestEnvelope,
    provider: &'a str,
    attempt: u32,
    seq: u32,
    /// A batch item's frames so far.
    held: Vec<ReplyFrame>,
    /// A batch item's result waits for `settle` (to be stored with its usage
    /// event) instead of being stored with the final frame.
    deferred: bool,
    unsettled: &'a std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>,
}

impl<'a> Replier<'a> {
    fn new(cx: &'a Shared, env: &'a RequestEnvelope, attempt: u32) -> Self {
        Replier {
            bus: &cx.bus,
            env,
            provider: &cx.provider.name,
            attempt,
            seq: env.resume.as_ref().map_or(0, |r| r.seq),
            held: Vec::new(),
            deferred: false,
            unsettled: &cx.unsettled,
        }
    }

    fn start_info(&self, meta: Option<ResponseMeta>) -> StartInfo {
        let meta = meta.unwrap_or_default();
        StartInfo {
            provider: self.provider.to_owned(),
            model: self.env.model.clone(),
            served_model: meta.model,
            response_id: meta.id,
            created: meta.created,
            system_fingerprint: meta.system_fingerprint,
            attempt: self.attempt,
        }
    }

    async fn publish(&mut self, frame: ReplyFrame) {
        self.seq += 1;
        if let Some(item) = &self.env.batch {
            let last = matches!(frame, ReplyFrame::Final(_));
            self.held.push(frame);
            if last && !self.deferred {
                let result = BatchResult {
                    batch_id: item.batch_id.clone(),
                    index: item.index,
                    custom_id: item.custom_id.clone(),
                    request_id: self.env.request_id,
                    frames: std::mem::take(&mut self.held),
                    usage: None,
                };
                self.store(&result).await;
            }
            return;
        }
        if let Err(e) = self.bus.publish_frame(&self.env.reply_to, &frame).await {
            tracing::warn!(error = %e, "Publishing a reply frame failed.");
        }
    }

    /// Stores a deferred batch item's result, once it holds its final frame,
    /// with the usage event of the call behind it: the answer and its bill are
    /// stored in one message, so no crash can keep one without the other.
    async fn settle(&mut self, event: &UsageEvent) {
        let Some(item) = &self.env.batch else {
            return;
        };
        if !matches!(self.held.last(), Some(ReplyFrame::Final(_))) {
            return;
        }
        let result = BatchResult {
            batch_id: item.batch_id.clone(),
            index: item.index,
            custom_id: item.custom_id.clone(),
            request_id: self.env.request_id,
            frames: std::mem::take(&mut self.held),
            usage: Some(event.clone()),
        };
        self.store(&result).await;
    }

    /// Ends the request with `error`; a batch item's result carries `event`.
    async fn fail_billed(mut self, error: FrameError, event: &UsageEvent) {
        self.deferred = true;
        self.fail(error).await;
        self.settle(event).await;
    }

    /// Stores a batch item's result, retrying briefly; marks the item unsettled
    /// (to be run again) when the bus would not take it.
    async fn store(&self, result: &BatchResult) {
        let mut delay = Duration::from_millis(100);
        for _ in 0..4 {
            match self.bus.publish_batch_result(result).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "Storing a batch result failed; retrying.");
                    tokio::time::sleep(delay).await;
                    delay *= 3;
                }
            }
        }
        if let Ok(mut u) = self.unsettled.lock() {
            u.insert(self.env.request_id);
        }
    }

    async fn fail(&mut self, error: FrameError) {
        let start = (self.seq == 0).then(|| self.start_info(None));
        let frame = ReplyFrame::Final(FinalFrame {
            seq: self.seq,
            start,
            finish_reason: None,
            usage: None,
            error: Some(error),
        });
        self.publish(frame).await;
    }

    /// Embeds the input and sends one frame per vector, then the final frame.
    async fn run_embeddings(
        &mut self,
        adapter: &AnyProvider,
        req: &EmbeddingsRequest,
        state: &mut AttemptState,
    ) {
        let cx = CallContext {
            model: self.env.model.clone(),
            stream: false,
        };
        state.reached_provider = true;
        let emb = match adapter.embed(req, &cx).await {
            Ok(e) => e,
            Err(e) => return self.provider_failed(e, state).await,
        };
        if emb.vectors.len() != req.input.len() {
            let e = ProviderError::Protocol(format!(
                "{} vectors for {} inputs",
                emb.vectors.len(),
                req.input.len()
            ));
            return self.provider_failed(e, state).await;
        }
        state.first_token_unix_ms = Some(now_unix_ms());
        state.served_model.clone_from(&emb.model);
        state.usage.clone_from(&emb.usage);
        let meta = ResponseMeta {
            model: emb.model,
            ..ResponseMeta::default()
        };
        let mut meta = Some(meta);
        for (i, v) in emb.vectors.into_iter().enumerate() {
            let start = (self.seq == 0).then(|| self.start_info(meta.take()));
            let frame = ReplyFrame::Embedding(EmbeddingFrame {
                seq: self.seq,
                start,
                index: i as u32,
                embedding: v,
            });
            self.publish(frame).await;
        }
        // The client's usage: the provider's, else our estimate (the usage event
        // marks it as estimated).
        let usage = state.usage.clone().unwrap_or_else(|| {
            let n = crate::tokens::estimate_embeddings(&self.env.model, req);
            Usage {
                prompt_tokens: n,
                total_tokens: n,
                ..Usage::default()
            }
        });
        let start = (self.seq == 0).then(|| self.start_info(None));
        let frame = ReplyFrame::Final(FinalFrame {
            seq: self.seq,
            start,
            finish_reason: None,
            usage: Some(usage),
            error: None,
        });
        self.publish(frame).await;
    }

    /// Calls the provider and relays its answer. Ends with a final frame, except
    /// when the call failed before anything was sent (`seq` still 0): then the
    /// error is in `state` and the caller decides (retry, fallback or final).
    /// Everything learned goes into `state` as it happens. Streamed calls must
    /// bring their first token within `ttft_timeout` and then never stay silent
    /// longer than `idle_timeout`; other calls must answer within `response_timeout`.
    async fn run(
        &mut self,
        adapter: &AnyProvider,
        provider: &ProviderConfig,
        state: &mut AttemptState,
    ) {
        let env = self.env;
        if let Some(req) = &env.embeddings {
            return self.run_embeddings(adapter, req, state).await;
        }
        let stream_mode = env.request.is_stream();
        let cx = CallContext {
            model: env.model.clone(),
            stream: stream_mode,
        };
        // A continued stream: the target continues the text as an assistant
        // prefill when it can, else answers anew and is spliced.
        let (request, mut fit) = match &env.resume {
            None => (std::borrow::Cow::Borrowed(&env.request), Fit::Fresh),
            // (A prefill of nothing but whitespace would be refused: splice.)
            Some(r) if provider.prefill && !r.text.trim_end().is_empty() => {
                let kept = r.text.trim_end();
                let mut req = env.request.clone();
                req.messages
                    .push(sy_protocol::chat::Message::assistant_text(kept));
                if provider.kind == sy_config::ProviderKind::OpenAiCompatible {
                    // vLLM's spelling of "continue this assistant message".
                    req.extra
                        .insert("continue_final_message".into(), true.into());
                    req.extra
                        .insert("add_generation_prompt".into(), false.into());
                }
                let ws = r.text[kept.len()..].to_owned();
                (std::borrow::Cow::Owned(req), Fit::Prefill { ws })
            }
            Some(r) => (
                std::borrow::Cow::Borrowed(&env.request),
                Fit::Splice {
                    text: r.text.clone(),
                    matched: 0,
                },
            ),
        };
        let base = self.seq;
        let limit =
            |route: Option<u64>, target: Duration| route.map_or(target, Duration::from_millis);
        let ttft_timeout = limit(env.watchdogs.ttft_ms, provider.ttft_timeout);
        let idle_timeout = limit(env.watchdogs.idle_ms, provider.idle_timeout);
        let response_timeout = limit(env.watchdogs.response_ms, provider.response_timeout);
        let started = tokio::time::Instant::now();
        // Streamed: the headers within `header_timeout` when it is set (the
        // first token then within `ttft_timeout` of them), else both within
        // `ttft_timeout` of the request.
        let separate_headers = provider.header_timeout.filter(|_| stream_mode);
        let headers_by = started
            + match (stream_mode, separate_headers) {
                (true, Some(h)) => h,
                (true, None) => ttft_timeout,
                (false, _) => response_timeout,
            };
        let silent = |what: &str, limit: Duration| {
            ProviderError::Timeout(format!("{what} within {} s", limit.as_secs_f64()))
        };
        state.reached_provider = true;
        let mut stream =
            match tokio::time::timeout_at(headers_by, adapter.chat(&request, &cx)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return self.provider_failed(e, state).await,
                Err(_) => {
                    let e = match (stream_mode, separate_headers) {
                        (true, Some(h)) => silent("no response headers", h),
                        (true, None) => silent("no first token", ttft_timeout),
                        (false, _) => silent("no answer", response_timeout),
                    };
                    return self.provider_failed(e, state).await;
                }
            };
        let first_by = match separate_headers {
            Some(_) => tokio::time::Instant::now() + ttft_timeout,
            None => headers_by,
        };
        tracing::trace!("Provider answered.");
        // Meta-only events (a stream's opening) wait for the first content, so
        // that nothing reaches the client before the target has really answered.
        let mut held_meta = None;
        loop {
            let by = if !stream_mode || self.seq == base {
                first_by
            } else {
                tokio::time::Instant::now() + idle_timeout
            };
            let item = match tokio::time::timeout_at(by, stream.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(_) => {
                    let e = match (stream_mode, self.seq == base) {
                        (true, true) => silent("no first token", ttft_timeout),
                        (true, false) => silent("the stream stalled: no chunk", idle_timeout),
                        (false, _) => silent("no answer", response_timeout),
                    };
                    return self.provider_failed(e, state).await;
                }
            };
            let mut chunk = match item {
                Ok(c) => c,
                Err(e) => return self.provider_failed(e, state).await,
            };
            if chunk.usage.is_some() {
                state.usage = chunk.usage;
            }
            if let Some(meta) = &chunk.meta {
                state.served_model.clone_from(&meta.model);
            }
            for c in &mut chunk.choices {
                if c.index != 0 || c.delta.refusal.is_some() || c.delta.tool_calls.is_some() {
                    state.not_plain = true;
                }
                if c.index == 0
                    && let Some(text) = &c.delta.content
                {
                    let Some(sent) = fit.take(text) else {
                        state.diverged = true;
                        let e = ProviderError::Protocol(
                            "the fallback's answer diverged from the text already sent".into(),
                        );
                        return self.provider_failed(e, state).await;
                    };
                    state.content.push_str(sent);
                    if sent.len() != text.len() {
                        c.delta.content = Some(sent.to_owned());
                    }
                }
                if env.resume.is_some() {
                    // The client has its opening already.
                    c.delta.role = None;
                }
                let d = &c.delta;
                for piece in [&d.content, &d.refusal].into_iter().flatten() {
                    state.output_text.push_str(piece);
                }
                for tc in d.tool_calls.iter().flatten() {
                    if let Some(args) = tc.function.as_ref().and_then(|f| f.arguments.as_ref()) {
                        state.output_text.push_str(args);
                    }
                }
                if c.index == 0 && c.finish_reason.is_some() {
                    state.finish_reason.clone_from(&c.finish_reason);
                }
            }
            // Choices left with nothing to say (held back, or an opening the
            // client already has) are not sent.
            chunk.choices.retain(|c| {
                c.finish_reason.is_some()
                    || c.delta.refusal.is_some()
                    || c.delta.tool_calls.is_some()
                    || c.delta.content.as_deref().is_some_and(|t| !t.is_empty())
                    || (c.delta.role.is_some() && env.resume.is_none())
            });
            if chunk.choices.is_empty() {
                if self.seq == base && held_meta.is_none() {
                    held_meta = chunk.meta;
                }
                continue;
            }
            if state.first_token_unix_ms.is_none() {
                state.first_token_unix_ms = Some(now_unix_ms());
            }
            let meta = chunk.meta.take().or_else(|| held_meta.take());
            // A continued stream's first frame says who continues it.
            let start = (self.seq == base).then(|| self.start_info(meta));
            let frame = ReplyFrame::Chunk(ChunkFrame {
                seq: self.seq,
                start,
                choices: chunk.choices,
            });
            self.publish(frame).await;
        }
        if !fit.caught_up() {
            state.diverged = true;
            let e = ProviderError::Protocol(
                "the fallback's answer ended before reproducing the text already sent".into(),
            );
            return self.provider_failed(e, state).await;
        }
        let start = (self.seq == base).then(|| self.start_info(held_meta.take()));
        let frame = ReplyFrame::Final(FinalFrame {
            seq: self.seq,
            start,
            finish_reason: state.finish_reason.clone(),
            usage: state.usage.clone(),
            error: None,
        });
        self.publish(frame).await;
        tracing::trace!("Final frame published.");
    }

    /// Records the failure; the caller decides what the client gets (a retry,
    /// a fallback, a recovery, or the error).
    async fn provider_failed(&mut self, e: ProviderError, state: &mut AttemptState) {
        tracing::debug!(error = %e, "Provider call failed.");
        state.error = Some(e.to_frame_error(self.provider));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: ErrorCode, status: Option<u16>, retry_after_ms: Option<u64>) -> FrameError {
        let mut e = FrameError::new(code, "x");
        e.provider_status = status;
        e.retry_after_ms = retry_after_ms;
        e
    }

    #[test]
    fn a_route_may_let_refusals_fall_back() {
        let e = err(ErrorCode::ContentFiltered, Some(400), None);
        assert_eq!(next_step(&e, true), Next::Fallback);
        assert_eq!(next_step(&e, false), Next::Final);
    }

    /// docs/reliability.md's failure table, row by row.
    #[test]
    fn the_failure_table() {
        let rows: [(FrameError, Next); 12] = [
            (
                err(ErrorCode::RateLimited, Some(429), Some(1500)),
                Next::Retry(Some(Duration::from_millis(1500))),
            ),
            (
                err(ErrorCode::RateLimited, Some(429), None),
                Next::Retry(None),
            ),
            (
                err(ErrorCode::Overloaded, Some(529), None),
                Next::Retry(None),
            ),
            (
                err(ErrorCode::ProviderError, Some(500), None),
                Next::Retry(None),
            ),
            (
                err(ErrorCode::ProviderError, Some(502), None),
                Next::Retry(None),
            ),
            (
                err(ErrorCode::ProviderError, Some(408), None),
                Next::Retry(None),
            ),
            // Connection refused or reset, an unreadable answer: no status.
            (err(ErrorCode::ProviderError, None, None), Next::Retry(None)),
            (err(ErrorCode::ProviderTimeout, None, None), Next::Fallback),
            (
                err(ErrorCode::ContextLengthExceeded, Some(400), None),
                Next::Fallback,
            ),
            (
                err(ErrorCode::ContentFiltered, Some(400), None),
                Next::Final,
            ),
            (err(ErrorCode::ProviderError, Some(401), None), Next::Final),
            (err(ErrorCode::InvalidRequest, None, None), Next::Final),
        ];
        for (e, want) in rows {
            assert_eq!(
                next_step(&e, false),
                want,
                "{:?} {:?}",
                e.code,
                e.provider_status
            );
        }
    }

    #[test]
    fn splicing_holds_back_until_the_sent_text_is_reproduced() {
        let mut f = Fit::Splice {
            text: "Hello wor".into(),
            matched: 0,
        };
        assert_eq!(f.take("Hel"), Some(""));
        assert!(!f.caught_up());
        assert_eq!(f.take("lo"), Some(""));
        // The piece that completes the sent text carries the first new bytes.
        assert_eq!(f.take(" world"), Some("ld"));
        assert!(f.caught_up());
        assert_eq!(f.take("!"), Some("!"));
        let mut g = Fit::Splice {
            text: "Hello".into(),
            matched: 0,
        };
        assert_eq!(g.take("Help"), None, "diverged");
    }

    #[test]
    fn a_prefill_continuation_drops_the_whitespace_the_prefill_lost_once() {
        let mut f = Fit::Prefill { ws: " ".into() };
        assert_eq!(f.take(""), Some(""));
        assert_eq!(f.take(" next"), Some("next"));
        assert_eq!(f.take(" word"), Some(" word"));
        let mut g = Fit::Prefill { ws: "\n".into() };
        assert_eq!(g.take(" other"), Some(" other"), "kept when it differs");
    }
}
