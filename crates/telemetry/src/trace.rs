//! OpenTelemetry traces (issue 19): one request is one trace from the
//! ingress's HTTP span, through the JetStream publish (`traceparent` in the
//! NATS message headers), to each worker's handling and every provider call
//! it made (retries, fallbacks and mid-stream recoveries included, each a
//! `CLIENT` span named `chat {model}` with the GenAI semantic-convention
//! attributes).
//!
//! Spans are exported over OTLP/HTTP (protobuf or JSON) by the SDK's batch
//! processor on a thread of its own, off the request path. Off (the default)
//! nothing is created: every [`Span`] is `Span::off()`, whose methods do
//! nothing, and [`enabled`] is one atomic load.
//!
//! Prompts and answers are recorded only when `[tracing] record_content`
//! says so ([`records_content`]).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use sy_config::TracingConfig;

/// The W3C trace-context header, on HTTP requests and NATS messages alike.
pub use sy_protocol::header::TRACEPARENT;

struct Global {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    record_content: bool,
}

static GLOBAL: OnceLock<Global> = OnceLock::new();

/// Whether this process records spans.
pub fn enabled() -> bool {
    GLOBAL.get().is_some()
}

/// Whether provider-call spans carry the prompt and the answer.
pub fn records_content() -> bool {
    GLOBAL.get().is_some_and(|g| g.record_content)
}

/// Whether `config` (and, where it says nothing, the standard
/// `OTEL_*` variables read through `var`) turns tracing on.
pub fn wanted(config: &TracingConfig, var: impl Fn(&str) -> Option<String>) -> bool {
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return false;
    }
    config.enabled.unwrap_or_else(|| {
        [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .any(|k| var(k).is_some_and(|v| !v.is_empty()))
    })
}

/// Starts exporting spans when `config` (or the `OTEL_*` variables) turns
/// tracing on; returns whether it did. Errors name what is wrong (a gRPC
/// protocol asked for by variable, an exporter that cannot be built).
pub fn init(config: &TracingConfig) -> Result<bool, String> {
    let var = |k: &str| std::env::var(k).ok();
    if !wanted(config, var) || GLOBAL.get().is_some() {
        return Ok(GLOBAL.get().is_some());
    }
    let protocol = match config.protocol.clone().or_else(|| {
        var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
    }) {
        None => Protocol::HttpBinary,
        Some(p) if p == "http/protobuf" => Protocol::HttpBinary,
        Some(p) if p == "http/json" => Protocol::HttpJson,
        Some(p) => {
            return Err(format!(
                "OTLP protocol {p:?} is not built in: use http/protobuf or http/json"
            ));
        }
    };
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol);
    // The SDK reads OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT when nothing is set here.
    if var("OTEL_EXPORTER_OTLP_TIMEOUT").is_none()
        && var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").is_none()
    {
        exporter = exporter.with_timeout(Duration::from_secs(10));
    }
    if let Some(endpoint) = &config.endpoint {
        exporter = exporter.with_endpoint(endpoint.clone());
    }
    let exporter = exporter.build().map_err(|e| e.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let service = config
        .service_name
        .clone()
        .or_else(|| var("OTEL_SERVICE_NAME"))
        .unwrap_or_else(|| "switchyard".to_owned());
    resource = resource.with_service_name(service);
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("switchyard");
    let _ = GLOBAL.set(Global {
        provider,
        tracer,
        record_content: config.record_content,
    });
    Ok(true)
}

/// Exports what is still buffered and stops the exporter (at process exit,
/// outside the async runtime: it blocks until the collector answered or
/// timed out).
pub fn shutdown() {
    if let Some(g) = GLOBAL.get()
        && let Err(e) = g.provider.shutdown()
    {
        tracing::warn!(error = %e, "Flushing the last spans failed.");
    }
}

/// The context a `traceparent` value continues (an invalid or absent one: a
/// new trace). Parsed as W3C Trace Context level 1 says, strictly: lowercase
/// hex fields of exactly 32, 16 and 2 digits, ids not all zero, version `ff`
/// refused, and a version-00 value exactly 55 characters (a later version
/// may append fields).
fn parent_of(traceparent: Option<&str>) -> Context {
    traceparent
        .and_then(parse_traceparent)
        .map_or_else(Context::new, |sc| {
            Context::new().with_remote_span_context(sc)
        })
}

fn parse_traceparent(v: &str) -> Option<SpanContext> {
    let v = v.trim();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let mut parts = v.splitn(5, '-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next();
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) {
        return None;
    }
    if !hex(flags, 2) || (version == "00" && rest.is_some()) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(parent).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & 1);
    let sc = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    sc.is_valid().then_some(sc)
}

/// A started span, or nothing when tracing is off. Clones share the span,
/// which ends when the last clone is dropped (or at [`Span::end_at`]).
#[derive(Clone, Default)]
pub struct Span(Option<Context>);

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.trace_id() {
            Some(id) => write!(f, "Span({id})"),
            None => f.write_str("Span(off)"),
        }
    }
}

fn start(name: String, kind: SpanKind, parent: &Context, attrs: Vec<KeyValue>) -> Option<Context> {
    let g = GLOBAL.get()?;
    let span = g
        .tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attrs)
        .start_with_context(&g.tracer, parent);
    Some(parent.with_span(span))
}

impl Span {
    /// No span (tracing off, or nothing to trace).
    pub fn off() -> Span {
        Span(None)
    }

    /// The `SERVER` span of an HTTP request to `route` (a route template),
    /// continuing the client's `traceparent` when it sent a valid one.
    pub fn server(method: &str, route: &str, traceparent: Option<&str>) -> Span {
        if !enabled() {
            return Span::off();
        }
        Span(start(
            format!("{method} {route}"),
            SpanKind::Server,
            &parent_of(traceparent),
            vec![
                KeyValue::new("http.request.method", method.to_owned()),
                KeyValue::new("http.route", route.to_owned()),
            ],
        ))
    }

    /// The `CONSUMER` span of a worker's handling of a message from
    /// `subject`, continuing the message's `traceparent` (a new trace without
    /// one, e.g. a batch item).
    pub fn consumer(subject: &str, traceparent: Option<&str>, request_id: &str) -> Span {
        if !enabled() {
            return Span::off();
        }
        Span(start(
            format!("process {subject}"),
            SpanKind::Consumer,
            &parent_of(traceparent),
            vec![
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", subject.to_owned()),
                KeyValue::new("switchyard.request_id", request_id.to_owned()),
            ],
        ))
    }

    /// A `PRODUCER` child span for publishing a message to `subject` (its
    /// [`Span::traceparent`] goes in the message's headers).
    pub fn producer(&self, subject: &str, message_id: &str) -> Span {
        let Some(cx) = &self.0 else {
            return Span::off();
        };
        Span(start(
            format!("publish {subject}"),
            SpanKind::Producer,
            cx,
            vec![
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.destination.name", subject.to_owned()),
                KeyValue::new("messaging.message.id", message_id.to_owned()),
            ],
        ))
    }

    /// Whether there is a span (tracing on).
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> Option<String> {
        let cx = self.0.as_ref()?;
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| sc.trace_id().to_string())
    }

    /// The W3C `traceparent` naming this span as the parent.
    pub fn traceparent(&self) -> Option<String> {
        let cx = self.0.as_ref()?;
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| {
            format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            )
        })
    }

    /// Sets a string attribute.
    pub fn set(&self, key: &'static str, value: impl Into<String>) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(KeyValue::new(key, value.into()));
        }
    }

    /// Sets an integer attribute.
    pub fn set_i64(&self, key: &'static str, value: i64) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed with `error_type` (`error.type` and an error status).
    pub fn fail(&self, error_type: &str) {
        if let Some(cx) = &self.0 {
            let span = cx.span();
            span.set_attribute(KeyValue::new("error.type", error_type.to_owned()));
            span.set_status(Status::error(error_type.to_owned()));
        }
    }

    /// Adds an event with string attributes.
    pub fn event(&self, name: &'static str, attrs: &[(&'static str, &str)]) {
        if let Some(cx) = &self.0 {
            cx.span().add_event(
                name,
                attrs
                    .iter()
                    .map(|(k, v)| KeyValue::new(*k, (*v).to_owned()))
                    .collect(),
            );
        }
    }

    /// Ends the span now (its clones can no longer change it).
    pub fn end(&self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }

    /// Records one provider call, already ended, as a `CLIENT` child span
    /// named `{operation} {request model}` with the GenAI attributes.
    pub fn call(&self, c: &Call<'_>) {
        let Some(cx) = &self.0 else {
            return;
        };
        let Some(g) = GLOBAL.get() else {
            return;
        };
        let mut attrs = vec![
            KeyValue::new("gen_ai.operation.name", c.operation),
            KeyValue::new("gen_ai.provider.name", c.provider_name),
            KeyValue::new("gen_ai.request.model", c.request_model.to_owned()),
            KeyValue::new("gen_ai.usage.input_tokens", c.input_tokens as i64),
            KeyValue::new("gen_ai.usage.output_tokens", c.output_tokens as i64),
            KeyValue::new("switchyard.provider", c.provider.to_owned()),
            KeyValue::new("switchyard.attempt", i64::from(c.attempt)),
            KeyValue::new("switchyard.status", c.status),
        ];
        if let Some(m) = c.response_model {
            attrs.push(KeyValue::new("gen_ai.response.model", m.to_owned()));
        }
        if let Some(f) = c.finish_reason {
            attrs.push(KeyValue::new(
                "gen_ai.response.finish_reasons",
                opentelemetry::Value::Array(
                    vec![opentelemetry::StringValue::from(f.to_owned())].into(),
                ),
            ));
        }
        if let Some(host) = c.server_address {
            attrs.push(KeyValue::new("server.address", host.to_owned()));
        }
        if let Some(r) = c.reason {
            attrs.push(KeyValue::new("switchyard.attempt.reason", r.to_owned()));
        }
        if let Some(e) = c.error_type {
            attrs.push(KeyValue::new("error.type", e.to_owned()));
        }
        if let Some((input, output)) = c.content.as_ref().filter(|_| g.record_content) {
            attrs.push(KeyValue::new("gen_ai.input.messages", input.clone()));
            attrs.push(KeyValue::new("gen_ai.output.messages", output.clone()));
        }
        let mut span = g
            .tracer
            .span_builder(format!("{} {}", c.operation, c.request_model))
            .with_kind(SpanKind::Client)
            .with_start_time(c.started)
            .with_attributes(attrs)
            .start_with_context(&g.tracer, cx);
        if let Some(t) = c.first_token {
            span.add_event_with_timestamp("gen_ai.first_token", t, Vec::new());
        }
        if let Some(e) = c.error_type {
            span.set_status(Status::error(e.to_owned()));
        }
        span.end_with_timestamp(c.ended.max(c.started));
    }
}

/// One provider call as [`Span::call`] records it.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// `chat` or `embeddings`.
    pub operation: &'static str,
    /// The GenAI provider name (`openai`, `anthropic`, `gcp.gemini`, …).
    pub provider_name: &'static str,
    /// The configured provider.
    pub provider: &'a str,
    /// The model asked of the provider.
    pub request_model: &'a str,
    /// The model the provider says answered.
    pub response_model: Option<&'a str>,
    /// Tokens read and written.
    pub input_tokens: u64,
    /// Tokens written.
    pub output_tokens: u64,
    /// Why the answer ended.
    pub finish_reason: Option<&'a str>,
    /// What went wrong (a Switchyard error code).
    pub error_type: Option<&'a str>,
    /// `ok`, `error`, `cancelled`, `cut_off` or `expired`.
    pub status: &'static str,
    /// The attempt number.
    pub attempt: u32,
    /// Why this attempt was made (a retry's, a fallback's reason).
    pub reason: Option<&'a str>,
    /// The provider's host.
    pub server_address: Option<&'a str>,
    /// When the call began, its first token, and its end.
    pub started: SystemTime,
    /// The first token's arrival.
    pub first_token: Option<SystemTime>,
    /// The call's end.
    pub ended: SystemTime,
    /// The prompt (JSON) and the answer, recorded when `record_content` is on.
    pub content: Option<(String, String)>,
}

/// A Unix-millisecond time as a `SystemTime`.
pub fn unix_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_is_wanted_by_config_or_by_an_otlp_endpoint_variable() {
        let off = TracingConfig::default();
        let none = |_: &str| None;
        assert!(!wanted(&off, none));
        let endpoint =
            |k: &str| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://c:4318".into());
        assert!(wanted(&off, endpoint));
        let said_off = TracingConfig {
            enabled: Some(false),
            ..TracingConfig::default()
        };
        assert!(!wanted(&said_off, endpoint));
        let said_on = TracingConfig {
            enabled: Some(true),
            ..TracingConfig::default()
        };
        assert!(wanted(&said_on, none));
        let disabled = |k: &str| (k == "OTEL_SDK_DISABLED").then(|| "TRUE".into());
        assert!(!wanted(&said_on, disabled));
    }

    #[test]
    fn a_valid_traceparent_is_continued_and_a_bad_one_is_not() {
        let cx = parent_of(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "junk",
        ] {
            assert!(
                !parent_of(Some(bad)).span().span_context().is_valid(),
                "{bad}"
            );
        }
    }

    #[test]
    fn off_spans_do_nothing() {
        let s = Span::off();
        assert!(!s.is_on());
        assert!(s.trace_id().is_none() && s.traceparent().is_none());
        assert!(!s.producer("x", "y").is_on());
        s.fail("provider");
        s.end();
    }
}
