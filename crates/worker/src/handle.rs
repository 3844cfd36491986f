//! One pulled request message from start to ack: redelivery checks, the
//! deadline and cancels, serving it on this target (retries, then failover),
//! and the ending (completion mark, usage event, ack).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{self, AckKind};
use backon::{BackoffBuilder, ExponentialBuilder};
use sy_bus::Bus;
use sy_protocol::batch::BatchResult;
use sy_protocol::{
    CancelReason, ErrorCode, FinalFrame, FrameError, MidStream, ReplyFrame, RequestEnvelope,
    Resume, UsageEvent, UsageStatus, now_unix_ms,
};
use sy_router::Live;
use sy_telemetry::trace;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::attempt::{AttemptState, Call};
use crate::done::Mark;
use crate::failover::fall_back;
use crate::failure::{Next, RETRY_MAX, RETRY_MIN, next_step};
use crate::replier::Replier;
use crate::shared::{InHand, Shared};
use crate::usage::{self, Ended};

/// Attempt numbers of a redelivered message start this far above the original
/// delivery's, so a call made after a worker crash never reuses a usage event id.
const ATTEMPT_STRIDE: u32 = 16;

/// Handles one pulled message from start to ack.
pub(crate) async fn handle(cx: Arc<Shared>, msg: jetstream::Message) {
    let dispatched_unix_ms = now_unix_ms();
    let pulled = std::time::Instant::now();
    let delivered = msg.info().map_or(1, |i| i.delivered.max(1));
    let (msg, acker) = msg.split();
    let env: RequestEnvelope = match sy_protocol::legacy::read_envelope(&msg.payload) {
        Ok(env) => env,
        Err(e) => {
            tracing::error!(subject = %msg.subject, error = %e, "Refusing an unreadable request envelope.");
            answer_unreadable(&cx.bus, &msg.payload).await;
            let _ = acker.ack_with(AckKind::Term).await;
            return;
        }
    };
    let read = std::time::Instant::now();
    // The request's trace continues from the publisher's span.
    let trace = if trace::enabled() {
        let parent = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(sy_protocol::header::TRACEPARENT))
            .map(|v| v.as_str());
        trace::Span::consumer(msg.subject.as_str(), parent, &env.request_id.to_string())
    } else {
        trace::Span::off()
    };
    // Traced, every log line of the request names its trace, so the span is
    // kept at the level logs are written at; untraced, it costs nothing
    // unless debug logging is on.
    let span = match trace.trace_id() {
        Some(trace_id) => tracing::info_span!(
            "worker.request",
            request_id = %env.request_id,
            provider = %cx.provider.name,
            model = %env.upstream_model,
            attempt = env.attempt,
            trace_id,
        ),
        None => tracing::debug_span!(
            "worker.request",
            request_id = %env.request_id,
            provider = %cx.provider.name,
            model = %env.upstream_model,
            attempt = env.attempt,
        ),
    };
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
                usage::publish_again(&cx.bus, &event, &acker).await;
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
                        usage::publish_again(&cx.bus, &event, &acker).await;
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
            trace.event("switchyard.expired", &[]);
            let call = Call::first(first_attempt, &env, dispatched_unix_ms);
            let event = usage::event(&cx, &env, &call, &state, Ended::Expired, &trace);
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
                (first_attempt, dispatched_unix_ms, (pulled, read)),
                &trace,
            )
            .await;
        } else {
            tracing::debug!("Request was cancelled before a worker took it.");
            let call = Call::first(first_attempt, &env, dispatched_unix_ms);
            trace.event("switchyard.cancelled", &[]);
            let event = usage::event(
                &cx,
                &env,
                &call,
                &AttemptState::default(),
                Ended::Cancelled,
                &trace,
            );
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

/// Serves one request on this target: calls, retries with backoff, and hands
/// over to the next target when this one cannot answer. Always ends with the
/// client answered (frames on the reply subject), the request republished to a
/// fallback, or the client gone.
async fn serve(
    cx: &Shared,
    env: &RequestEnvelope,
    acker: &Acker,
    running: &crate::cancel::RunningGuard,
    (first_attempt, dispatched_unix_ms, pulled): (
        u32,
        u64,
        (std::time::Instant, std::time::Instant),
    ),
    trace: &trace::Span,
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
        .half_open(&cx.provider.name, &env.upstream_model);
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
            .unhealthy(&cx.provider.name, &env.upstream_model)
    {
        let reason = format!("{}/{} {why}", cx.provider.name, env.upstream_model);
        let error = FrameError::new(ErrorCode::Overloaded, reason.clone());
        fall_back(cx, env, call.attempt, &error, reason, None, trace).await;
        return false;
    }
    loop {
        // Logs of this call carry its own attempt number (the span starts
        // with the envelope's).
        tracing::Span::current().record("attempt", call.attempt);
        let mut state = AttemptState::default();
        let mut replier = Replier::new(cx, env, call.attempt);
        replier.deferred = true;
        replier.pulled = env.timing.then_some(pulled);
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
            // The row's times are the call's, not the wait's.
            state.ended_unix_ms = Some(now_unix_ms());
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
        let event = usage::event(cx, env, &call, &state, ended, trace);
        crate::metrics::trace_call(trace, &cx.provider, env, &event, &state.content);
        // A batch item's answer is stored together with its usage event.
        replier.settle(&event).await;
        if event.status != UsageStatus::Ok {
            tracing::debug!(status = event.status.as_str(), "Attempt did not complete.");
        }
        if let Some(o) = usage::observation(&event, ended) {
            let quiet = cx.live.observe(&o, now_unix_ms());
            cx.observations.send(o, quiet).await;
        }
        let error = match (ended, state.error.take()) {
            (Ended::Done, Some(e)) => {
                crate::metrics::observe(&event);
                usage::publish(&cx.usage, &event, acker).await;
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
                    cx.provider.name, env.upstream_model
                );
                fall_back(cx, env, call.attempt, &error, reason, Some(resume), trace).await;
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
                    let reason =
                        format!("{}/{} failed: {code}", cx.provider.name, env.upstream_model);
                    fall_back(cx, env, call.attempt, &error, reason, None, trace).await;
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
                let reason = format!("{}/{} failed: {code}", cx.provider.name, env.upstream_model);
                fall_back(cx, env, call.attempt, &error, reason, None, trace).await;
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
    // Serialised once: the completion mark holds what the usage stream gets.
    let json = match crate::usage_sink::encode(event) {
        Ok(json) => json,
        Err(e) => {
            tracing::error!(error = %e, event_id = %event.event_id, "Usage event lost: it does not serialise.");
            return false;
        }
    };
    if interactive {
        let message_id = UsageEvent::event_id_of(env.request_id, env.attempt);
        cx.done.answered(&message_id, json.clone()).await;
    }
    // Counted here, where the attempt ends: a redelivered request that was
    // finished already publishes its event again, but is not counted again.
    crate::metrics::observe(event);
    usage::publish_encoded(&cx.usage, event, json, acker).await;
    interactive
}

/// How long a worker waits after the last frame of a stream long enough to
/// have been cut off for the ingress's cancel saying so.
const CUT_OFF_GRACE: Duration = Duration::from_millis(250);

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
