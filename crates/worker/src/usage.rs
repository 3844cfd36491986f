//! One usage event per attempt: what it cost, built from what the attempt learned.
//!
//! Token rules: the provider's own usage when it reported any (a
//! [`TokenUsage`], which its adapter normalised class by class); otherwise,
//! when the provider worked on the request (answered, or was cut off, cancelled or
//! timed out after it had the request), tiktoken estimates of the prompt and of the
//! output generated until then, marked `estimated`. An error answer (4xx/5xx) or a
//! call that never reached the provider counts no tokens. A client disconnect is
//! thus billed for the prompt and the output produced before the upstream call was
//! dropped: never zero, never the whole `max_tokens`.

use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::Acker;
use sy_bus::Bus;
use sy_config::price::scale;
use sy_protocol::{
    ErrorCode, Observation, Outcome, RequestEnvelope, TokenSource, TokenUsage, UsageEvent,
    UsageStatus, now_unix_ms,
};

use crate::attempt::{AttemptState, Call};
use crate::shared::Shared;
use crate::tokens;
use crate::usage_sink::UsageSink;

/// How an attempt ended, from the worker's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The call ran to its end (an answer or an error).
    Done,
    /// The client went away (or had before the worker took the request).
    Cancelled,
    /// The deadline passed.
    Expired,
    /// The ingress cut the client off for reading too slowly.
    CutOff,
}

/// Builds the attempt's usage event.
pub(crate) fn event(
    cx: &Shared,
    env: &RequestEnvelope,
    call: &Call,
    state: &AttemptState,
    ended: Ended,
    trace: &sy_telemetry::trace::Span,
) -> UsageEvent {
    let dispatched_unix_ms = call.started_unix_ms;
    let finished = state.ended_unix_ms.unwrap_or_else(now_unix_ms);
    let status = match (ended, &state.error) {
        (Ended::Done, None) => UsageStatus::Ok,
        (Ended::Done, Some(_)) => UsageStatus::Error,
        (Ended::Cancelled, _) => UsageStatus::Cancelled,
        (Ended::CutOff, _) => UsageStatus::CutOff,
        (Ended::Expired, _) => UsageStatus::Expired,
    };
    let provider_answered_error = state
        .error
        .as_ref()
        .is_some_and(|e| e.provider_status.is_some());
    let (tokens, source) = if let Some(u) = state.usage {
        (u, TokenSource::Provider)
    } else if state.reached_provider
        && !provider_answered_error
        && (status != UsageStatus::Error || !state.output_text.is_empty())
    {
        let input = match (&env.embeddings, &env.rerank, &env.images) {
            (Some(e), _, _) => tokens::estimate_embeddings(&env.upstream_model, e),
            (None, Some(r), _) => tokens::estimate_rerank(&env.upstream_model, r),
            (None, None, Some(i)) => tokens::estimate_output(&env.upstream_model, &i.prompt),
            // Audio in: no text tokens to count (billed per second).
            _ if env.transcription.is_some() => 0,
            _ if env.speech.is_some() => tokens::estimate_output(
                &env.upstream_model,
                env.speech.as_ref().map_or("", |s| s.input.as_str()),
            ),
            (None, None, None) => tokens::estimate_prompt(&env.upstream_model, &env.request),
        };
        let estimated = TokenUsage {
            input_tokens: input,
            output_tokens: tokens::estimate_output(&env.upstream_model, &state.output_text),
            ..TokenUsage::default()
        };
        (estimated, TokenSource::Estimated)
    } else {
        (TokenUsage::default(), TokenSource::None)
    };
    // Priced once, here: with what admission fixed for this target (the
    // version in effect when the request came, the org's multiplier), or,
    // from an older ingress, this worker's config prices and markup.
    // Per-unit prices only for an attempt the provider worked on (its tokens
    // were counted): a fallback's failed attempts are not billed the images.
    let worked = source != TokenSource::None;
    let (price, version, multiplier_ppb, plan) = match &env.pricing {
        Some(p) => (p.price, p.version, p.multiplier_ppb, p.plan.clone()),
        None => (
            cx.provider.prices.get(&env.upstream_model).copied(),
            0,
            1_000_000_000 + cx.markup_ppb,
            None,
        ),
    };
    // A rerank call's search units: the provider's count; else, where the
    // target is priced per search unit, Cohere's rule applied to the request.
    let search_units = match (&env.rerank, worked) {
        (Some(r), true) => state.search_units.unwrap_or_else(|| {
            if price.is_some_and(|p| p.per_search_unit > 0) {
                r.estimated_search_units(4)
            } else {
                0
            }
        }),
        _ => 0,
    };
    // Seconds of audio, rounded up, as the answer said them.
    let audio_seconds = match state.audio_seconds {
        Some(s) if worked && s.is_finite() && s > 0.0 => s.ceil() as u64,
        _ => 0,
    };
    // Text spoken: billed once the provider sent audio (a stream cut later
    // was still spoken up to there, and the provider bills it whole).
    let characters = match &env.speech {
        Some(s) if worked || state.first_token_unix_ms.is_some() => s.input.chars().count() as u64,
        _ => 0,
    };
    let units = sy_config::price::Units {
        requests: u64::from(worked),
        images: if worked { env.request.image_count() } else { 0 },
        search_units,
        output_images: state.output_images,
        audio_seconds,
        characters,
    };
    let cost = price.map(|p| p.cost_of(&tokens, units));
    let error_code = match (status, &state.error) {
        (_, Some(e)) => Some(e.code),
        (UsageStatus::Expired, None) => Some(ErrorCode::DeadlineExceeded),
        _ => None,
    };
    UsageEvent {
        trace_id: trace.trace_id(),
        tags: env.tags.clone(),
        cache_hit: false,
        pipeline_run: env.pipeline.as_ref().map(|p| p.run_id.clone()),
        pipeline_step: env.pipeline.as_ref().map(|p| p.step.clone()),
        event_id: UsageEvent::event_id_of(env.request_id, call.attempt),
        request_id: env.request_id,
        attempt: call.attempt,
        received_unix_ms: env.received_unix_ms,
        dispatched_unix_ms,
        first_token_unix_ms: state.first_token_unix_ms,
        finished_unix_ms: finished,
        key_id: env.key_id.clone(),
        org_id: env.org_id.clone(),
        project_id: env.project_id.clone(),
        ingress_id: env.ingress_id.clone(),
        worker_id: cx.worker_id.clone(),
        api: env.api,
        model: env.model.clone(),
        class: env.class.clone(),
        route: env.choice.as_ref().map(|c| c.route.clone()),
        strategy: env.choice.as_ref().map(|c| c.strategy.clone()),
        target_rank: env.choice.as_ref().map(|c| c.rank),
        provider: cx.provider.name.clone(),
        upstream_model: env.upstream_model.clone(),
        served_model: state.served_model.clone(),
        stream: env.request.is_stream(),
        status,
        error_code,
        provider_status: state.error.as_ref().and_then(|e| e.provider_status),
        finish_reason: state.finish_reason.clone(),
        tokens,
        search_units,
        output_images: state.output_images,
        audio_seconds,
        input_characters: characters,
        input_tokens_source: source,
        output_tokens_source: source,
        cost_nanos: cost,
        billed_nanos: cost.map(|c| {
            let billed = scale(c, multiplier_ppb);
            if env.batch.is_some() {
                scale(billed, cx.batch_price_ppb)
            } else {
                billed
            }
        }),
        price_version: Some(version),
        multiplier_ppb: Some(multiplier_ppb),
        plan,
        queue_wait_ms: dispatched_unix_ms.saturating_sub(env.received_unix_ms),
        ttft_ms: state
            .first_token_unix_ms
            .map(|t| t.saturating_sub(env.received_unix_ms)),
        latency_ms: finished.saturating_sub(env.received_unix_ms),
        fallback_reason: call.reason.clone(),
        client_disconnected: ended == Ended::Cancelled,
        batch_id: env.batch.as_ref().map(|b| b.batch_id.clone()),
        limits: env.limits.clone(),
    }
}

/// What the attempt says about its target, for every ingress's live state: only
/// calls that ran to their end (a cancel or an expired deadline says nothing
/// about the provider).
pub(crate) fn observation(event: &UsageEvent, ended: Ended) -> Option<Observation> {
    if ended != Ended::Done {
        return None;
    }
    let outcome = Outcome::of(event.error_code, event.provider_status);
    (outcome != Outcome::Neutral).then(|| Observation {
        provider: event.provider.clone(),
        model: event.upstream_model.clone(),
        worker_id: event.worker_id.clone(),
        outcome,
        error_code: event.error_code,
        ttft_ms: event
            .first_token_unix_ms
            .map(|t| t.saturating_sub(event.dispatched_unix_ms)),
        duration_ms: event
            .finished_unix_ms
            .saturating_sub(event.dispatched_unix_ms),
        at_unix_ms: event.finished_unix_ms,
        calls: 1,
    })
}

/// How long a worker keeps trying to store a usage event before it gives up.
pub(crate) const PUBLISH_FOR: Duration = Duration::from_secs(60);

/// How often a request waiting for its usage event to be stored says it is
/// still in progress (so it is not redelivered and called again).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Stores the event (by group commit, see `usage_sink`), keeping the request
/// in progress meanwhile. The sink retries for [`PUBLISH_FOR`]; an event that
/// still cannot be stored is logged whole at error level: an operator must act.
pub(crate) async fn publish(sink: &UsageSink, event: &UsageEvent, acker: &Acker) {
    match crate::usage_sink::encode(event) {
        Ok(json) => publish_encoded(sink, event, json, acker).await,
        Err(e) => {
            tracing::error!(error = %e, event_id = %event.event_id, "Usage event lost: it does not serialise.")
        }
    }
}

/// [`publish`] of `event` serialised already (`json`).
pub(crate) async fn publish_encoded(
    sink: &UsageSink,
    event: &UsageEvent,
    json: bytes::Bytes,
    acker: &Acker,
) {
    let stored = sink.store(event, json);
    tokio::pin!(stored);
    let result = loop {
        tokio::select! {
            r = &mut stored => break r,
            () = tokio::time::sleep(PROGRESS_EVERY) => {
                let _ = acker.ack_with(AckKind::Progress).await;
            }
        }
    };
    if let Err(e) = result {
        tracing::error!(
            error = %e,
            event = %serde_json::to_string(event).unwrap_or_default(),
            "Usage event lost: could not store it in JetStream."
        );
    }
}

/// Stores the event of a redelivered request that was finished already,
/// again and alone ([`Bus::publish_usage_again`]), retrying while NATS is
/// away and keeping the request in progress meanwhile.
pub(crate) async fn publish_again(bus: &Bus, event: &UsageEvent, acker: &Acker) {
    let until = tokio::time::Instant::now() + PUBLISH_FOR;
    let mut backoff = Duration::from_millis(50);
    loop {
        match bus.publish_usage_again(event).await {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() + backoff < until => {
                tracing::warn!(error = %e, "Publishing a usage event failed, retrying.");
                let _ = acker.ack_with(AckKind::Progress).await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    event = %serde_json::to_string(event).unwrap_or_default(),
                    "Usage event lost: could not store it in JetStream."
                );
                return;
            }
        }
    }
}
