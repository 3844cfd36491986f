//! Handing a request on to the next target of its order.

use sy_protocol::{ErrorCode, FallbackTarget, FrameError, RequestEnvelope, Resume, now_unix_ms};
use sy_router::Live;
use sy_telemetry::trace;

use crate::replier::Replier;
use crate::shared::Shared;

/// Republishes the request to the next target that can serve it (continuing a
/// stream from `resume` when output already reached the client), or, when none
/// is left, gives the client `error`. After a context-length error, targets
/// whose window is known to be no larger are skipped; targets whose breaker is
/// open are skipped unless nothing else is left.
pub(crate) async fn fall_back(
    cx: &Shared,
    env: &RequestEnvelope,
    attempt: u32,
    error: &FrameError,
    reason: String,
    resume: Option<Resume>,
    trace: &trace::Span,
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
    let here = window(&cx.provider.name, &env.upstream_model);
    let fits = |t: &FallbackTarget| {
        error.code != ErrorCode::ContextLengthExceeded
            || match (here, window(&t.provider, &t.upstream_model)) {
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
            live.unhealthy(&t.provider, &t.upstream_model).is_none()
        })
        .or_else(|| candidates.first().copied());
    let Some(i) = pick else {
        return fail(error.clone()).await;
    };
    let next = &env.fallback[i];
    let mut out = env.clone();
    out.attempt = attempt + 1;
    out.provider.clone_from(&next.provider);
    out.upstream_model.clone_from(&next.upstream_model);
    out.pricing.clone_from(&next.pricing);
    out.fallback = env.fallback[i + 1..].to_vec();
    out.fallback_reason = Some(reason);
    if resume.is_some() {
        out.resume.clone_from(&resume);
    }
    if let Some(choice) = &mut out.choice {
        choice.rank = next.rank;
    }
    tracing::debug!(to = %next.provider, model = %next.upstream_model, "Falling back.");
    // The next worker's span is a child of this one's: one trace throughout.
    trace.event(
        "switchyard.fallback",
        &[
            ("switchyard.fallback.provider", &next.provider),
            ("switchyard.fallback.model", &next.upstream_model),
            (
                "switchyard.fallback.reason",
                out.fallback_reason.as_deref().unwrap_or_default(),
            ),
        ],
    );
    // Within the request's deadline, and again while a stream elects its
    // leader (`[nats] publish_retry`), as the ingress does.
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_millis(env.deadline_unix_ms.saturating_sub(now_unix_ms()));
    if let Err(e) = cx
        .bus
        .publish_request_retrying(&out, trace.traceparent().as_deref(), deadline)
        .await
    {
        tracing::warn!(error = %e, "Could not hand the request to its fallback.");
        fail(error.clone()).await;
    }
}
