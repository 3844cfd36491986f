//! The worker's metrics (issue 19): each attempt's usage event, as it is
//! published, in the OpenTelemetry GenAI metrics (tokens, duration, time to
//! first token, time per output token) and Switchyard's attempts by outcome
//! and reason. Labels: the provider entry, the model when the config knows
//! it (else `other`), closed vocabularies for the rest.

use sy_protocol::{ApiSurface, RequestEnvelope, UsageEvent};
use sy_telemetry::{metrics, trace};

/// Records `e` (one attempt).
pub(crate) fn observe(e: &UsageEvent) {
    let m = metrics::get();
    let op = match e.api {
        ApiSurface::Embeddings => "embeddings",
        ApiSurface::Rerank => "rerank",
        ApiSurface::Images | ApiSurface::ImageEdits => "image_generation",
        ApiSurface::Transcriptions | ApiSurface::Translations => "speech_to_text",
        ApiSurface::Speech => "text_to_speech",
        _ => "chat",
    };
    let provider = e.provider.clone();
    let model = metrics::model_label(&e.upstream_model);
    // A retry on the same target says "retry after <code>"; a fallback names
    // the target that failed.
    let reason = match e.fallback_reason.as_deref() {
        Some(r) if r.starts_with("retry after ") => "retry",
        Some(_) => "fallback",
        None if e.attempt > 1 => "retry",
        None => "first",
    };
    m.attempts
        .get_or_create(&[
            ("provider", provider.clone()),
            ("model", model.clone()),
            ("outcome", e.status.as_str().to_owned()),
            ("reason", reason.to_owned()),
        ])
        .inc();
    let three = [
        ("gen_ai_operation_name", op.to_owned()),
        ("gen_ai_provider_name", provider.clone()),
        ("gen_ai_request_model", model.clone()),
    ];
    let error = e.error_code.map_or("none", |c| c.error_type());
    let secs = |ms: u64| ms as f64 / 1000.0;
    m.request_duration
        .get_or_create(&[
            three[0].clone(),
            three[1].clone(),
            three[2].clone(),
            ("error_type", error.to_owned()),
        ])
        .observe(secs(
            e.finished_unix_ms.saturating_sub(e.dispatched_unix_ms),
        ));
    // Time to first token and per output token mean something for a stream
    // only (a whole answer's first token is its last).
    if let Some(first) = e.first_token_unix_ms.filter(|_| e.stream) {
        m.time_to_first_token
            .get_or_create(&three)
            .observe(secs(first.saturating_sub(e.dispatched_unix_ms)));
        let out = e.tokens.output_tokens;
        if out > 1 {
            let after = secs(e.finished_unix_ms.saturating_sub(first));
            m.time_per_output_token
                .get_or_create(&three)
                .observe(after / (out - 1) as f64);
        }
    }
    for (kind, n) in [
        (
            "input",
            e.tokens.input_tokens + e.tokens.cached_input_tokens + e.tokens.cache_write_tokens,
        ),
        ("output", e.tokens.output_tokens),
    ] {
        if n > 0 {
            m.token_usage
                .get_or_create(&[
                    three[0].clone(),
                    three[1].clone(),
                    three[2].clone(),
                    ("gen_ai_token_type", kind.to_owned()),
                ])
                .observe(n as f64);
        }
    }
}

/// Records one provider call (an attempt that reached for the provider) as a
/// `CLIENT` span of the request's trace: named `chat {model}`, with the
/// GenAI attributes from its usage event, and the prompt and answer only
/// when `[tracing] record_content` is on.
pub(crate) fn trace_call(
    trace: &trace::Span,
    provider: &sy_config::ProviderConfig,
    env: &RequestEnvelope,
    e: &UsageEvent,
    answer: &str,
) {
    if !trace.is_on() {
        return;
    }
    let content = trace::records_content().then(|| {
        let prompt = match (&env.embeddings, &env.rerank, &env.images) {
            (Some(input), _, _) => serde_json::to_string(input),
            (None, Some(r), _) => serde_json::to_string(r),
            (None, None, Some(i)) => serde_json::to_string(&i.prompt),
            (None, None, None) => serde_json::to_string(&env.request.messages),
        };
        (prompt.unwrap_or_default(), answer.to_owned())
    });
    let host = provider.base_url.host_str();
    trace.call(&trace::Call {
        operation: match e.api {
            ApiSurface::Embeddings => "embeddings",
            ApiSurface::Rerank => "rerank",
            ApiSurface::Images | ApiSurface::ImageEdits => "image_generation",
            ApiSurface::Transcriptions | ApiSurface::Translations => "speech_to_text",
            ApiSurface::Speech => "text_to_speech",
            _ => "chat",
        },
        provider_name: genai_provider(provider.kind, host.unwrap_or_default()),
        provider: &e.provider,
        request_model: &e.upstream_model,
        response_model: e.served_model.as_deref(),
        input_tokens: e.tokens.input_tokens
            + e.tokens.cached_input_tokens
            + e.tokens.cache_write_tokens,
        output_tokens: e.tokens.output_tokens,
        finish_reason: e.finish_reason.as_deref(),
        error_type: e.error_code.map(|c| c.as_str()),
        status: e.status.as_str(),
        attempt: e.attempt,
        reason: e.fallback_reason.as_deref(),
        server_address: host,
        started: trace::unix_ms(e.dispatched_unix_ms),
        first_token: e.first_token_unix_ms.map(trace::unix_ms),
        ended: trace::unix_ms(e.finished_unix_ms),
        content,
    });
}

/// The OpenTelemetry `gen_ai.provider.name` of a provider entry: its
/// dialect's, or for an OpenAI-compatible one the well-known service its
/// host names (`openai` otherwise, as the conventions say for
/// OpenAI-compatible endpoints).
fn genai_provider(kind: sy_config::ProviderKind, host: &str) -> &'static str {
    use sy_config::ProviderKind::*;
    match kind {
        Anthropic => "anthropic",
        Gemini => "gcp.gemini",
        Cohere => "cohere",
        AzureOpenAi => "azure.ai.openai",
        OpenAiCompatible if host.ends_with("deepseek.com") => "deepseek",
        OpenAiCompatible if host.ends_with("mistral.ai") => "mistral_ai",
        OpenAiCompatible if host.ends_with("groq.com") => "groq",
        OpenAiCompatible => "openai",
    }
}
