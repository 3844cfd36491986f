//! The request flow of every model call, whatever its client API: read the
//! body, admit it (`admission`), publish the envelope, wait for the first
//! reply frame, then answer whole (`respond::json_response`) or stream it
//! (`respond::sse_response`) in the client's format.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::response::Response;
use sy_bus::BusError;
use sy_protocol::{ApiSurface, ErrorCode, ReplyFrame, StartInfo, header as hdr, now_unix_ms};
use uuid::Uuid;

use crate::error::ApiError;
use crate::intake::{check_content_type, read_body};
use crate::relay::{Pending, answer_meta};
use crate::respond::{json_response, sse_response, start_of, with_headers};
use crate::stages::{self, Stages};
use crate::state::AppState;
use crate::surface::{chat::SseEncoder, messages, responses};
use crate::{admission, extract, idempotency};

pub(crate) async fn chat_completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, ApiSurface::ChatCompletions, req).await
}

pub(crate) async fn messages(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, ApiSurface::Messages, req).await
}

pub(crate) async fn responses(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, ApiSurface::Responses, req).await
}

pub(crate) async fn embeddings_handler(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> Response {
    handle(state, ApiSurface::Embeddings, req).await
}

pub(crate) async fn rerank(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, ApiSurface::Rerank, req).await
}

pub(crate) async fn images(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, ApiSurface::Images, req).await
}

pub(crate) async fn image_edits(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, ApiSurface::ImageEdits, req).await
}

pub(crate) async fn transcriptions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, ApiSurface::Transcriptions, req).await
}

pub(crate) async fn translations(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, ApiSurface::Translations, req).await
}

pub(crate) async fn speech(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, ApiSurface::Speech, req).await
}

#[tracing::instrument(name = "ingress.request", skip_all, fields(request_id, api = ?surface, model, stream, trace_id))]
pub(crate) async fn handle(state: Arc<AppState>, surface: ApiSurface, req: Request) -> Response {
    // Every log line of the request names its trace (when tracing is on).
    if let Some(id) = req
        .extensions()
        .get::<sy_telemetry::trace::Span>()
        .and_then(|s| s.trace_id())
    {
        tracing::Span::current().record("trace_id", id);
    }
    // Boxed: the request's whole state machine (tens of kilobytes) is then
    // made once on the heap instead of being copied into the span's wrapper.
    if req.headers().contains_key(idempotency::HEADER) {
        return Box::pin(idempotency::serve(
            state,
            surface,
            req,
            move |state, req| handle_once(state, surface, req),
        ))
        .await;
    }
    Box::pin(handle_once(state, surface, req)).await
}

async fn handle_once(state: Arc<AppState>, surface: ApiSurface, req: Request) -> Response {
    let request_id = match req.extensions().get::<extract::RequestId>() {
        Some(id) => id.0,
        None => {
            return ApiError::new(ErrorCode::Internal, "the request was not identified")
                .render(surface);
        }
    };
    tracing::Span::current().record("request_id", tracing::field::display(request_id));
    match chat(&state, surface, request_id, req).await {
        Ok(resp) => resp,
        Err((e, start, class)) => {
            tracing::debug!(code = %e.code, error = %e.message, "Request failed.");
            with_headers(e.render(surface), request_id, start.as_ref(), class)
        }
    }
}

/// The most a body of `surface` may weigh: uploads have their own limit;
/// the JSON APIs' content type is checked here.
pub(crate) fn body_limit(
    state: &AppState,
    surface: ApiSurface,
    headers: &axum::http::HeaderMap,
) -> Result<usize, ApiError> {
    if is_upload(surface) {
        Ok(state.max_upload_bytes)
    } else {
        check_content_type(headers)?;
        Ok(state.max_body_bytes)
    }
}

fn is_upload(surface: ApiSurface) -> bool {
    matches!(
        surface,
        ApiSurface::Transcriptions | ApiSurface::Translations | ApiSurface::ImageEdits
    )
}

/// Files of a multipart body, to store once the request is admitted.
pub(crate) type Uploads = Vec<(sy_protocol::audio::Upload, bytes::Bytes)>;

/// A body of `surface`, parsed and validated: the canonical request, what
/// the APIs that are no chat ask, and a multipart body's files (they wait
/// in memory until the request is admitted and counted, then go to the
/// blob store). The form readers' futures are boxed: inline, they would
/// grow every request's state machine, which is moved whole.
pub(crate) async fn parse_body(
    surface: ApiSurface,
    headers: &axum::http::HeaderMap,
    body: bytes::Bytes,
    request_id: Uuid,
) -> Result<
    (
        sy_protocol::chat::ChatRequest,
        Option<admission::Payload>,
        Uploads,
    ),
    ApiError,
> {
    if surface == ApiSurface::ImageEdits {
        let form = Box::pin(crate::surface::images::parse_edit(
            headers, body, request_id,
        ))
        .await?;
        let request = sy_protocol::chat::ChatRequest::model_only(&form.request.model);
        let payload = admission::Payload::Images(form.request);
        Ok((request, Some(payload), form.uploads))
    } else if is_upload(surface) {
        let form = Box::pin(crate::surface::audio::parse(
            headers,
            body,
            surface == ApiSurface::Translations,
            request_id,
        ))
        .await?;
        let request = sy_protocol::chat::ChatRequest::model_only(&form.request.model);
        let uploads = vec![(form.request.file.clone(), form.audio)];
        let payload = admission::Payload::Transcription(form.request);
        Ok((request, Some(payload), uploads))
    } else {
        let (request, payload) = admission::parse(surface, &body)?;
        Ok((request, payload, Vec::new()))
    }
}

pub(crate) type ChatError = (ApiError, Option<StartInfo>, Option<sy_classifier::Class>);

async fn chat(
    state: &Arc<AppState>,
    surface: ApiSurface,
    request_id: Uuid,
    req: Request,
) -> Result<Response, ChatError> {
    let received_unix_ms = now_unix_ms();
    let (mut parts, body) = req.into_parts();
    let mut stages = parts.extensions.remove::<Stages>();
    let caller = parts.extensions.get::<extract::Caller>().ok_or_else(|| {
        let e = ApiError::new(ErrorCode::Internal, "the request was not authenticated");
        (e, None, None)
    })?;
    let limit = body_limit(state, surface, &parts.headers).map_err(|e| (e, None, None))?;
    let body = read_body(limit, &parts.headers, body)
        .await
        .map_err(|e| (e, None, None))?;
    // What Switchyard adds is counted from here: the client's upload is not.
    let received = std::time::Instant::now();
    stages::mark(&mut stages, "body");
    let body_len = body.len();
    let (request, payload, uploads) = parse_body(surface, &parts.headers, body, request_id)
        .await
        .map_err(|e| (e, None, None))?;
    stages::mark(&mut stages, "parse");
    let trace = parts
        .extensions
        .get::<sy_telemetry::trace::Span>()
        .cloned()
        .unwrap_or_default();
    if payload.is_none()
        && let Some(p) = state.pipeline(&request.model)
    {
        // Boxed: a run holds a whole answer's state and more, which would
        // otherwise make every request's future that much larger to move.
        return Box::pin(crate::pipeline::run(
            state,
            surface,
            request_id,
            caller,
            request,
            p,
            &parts.headers,
            trace,
        ))
        .await;
    }
    caller
        .may_use(&request.model)
        .map_err(|e| (e, None, None))?;
    let admitted = admission::admit_parsed(
        state,
        surface,
        request,
        payload,
        admission::Admission {
            request_id,
            caller,
            hints: admission::Hints::from_headers(&parts.headers),
            received_unix_ms,
            deadline_unix_ms: received_unix_ms + state.request_timeout.as_millis() as u64,
            batch: None,
        },
    )
    .map_err(|(e, class)| (e, None, class))?;
    stages::mark(&mut stages, "admit");
    // Rate limits: one Redis round trip, after everything that can refuse a
    // request for free and before it costs anything.
    let mut admitted = admitted;
    admitted.envelope.timing = stages.is_some();
    if matches!(surface, ApiSurface::Images | ApiSurface::ImageEdits) {
        admitted.origin = crate::surface::images::origin_of(&parts.headers);
    }
    let session =
        crate::ratelimit::session_of(&parts.headers).map_err(|e| (e, None, admitted.class))?;
    // The cache's directives are checked before limits count the request.
    let directives = match &state.cache {
        Some(_) => Some(
            crate::cache::Directives::of(&parts.headers).map_err(|e| (e, None, admitted.class))?,
        ),
        None => None,
    };
    let granted = match &state.rate_limits {
        Some(r) => r
            .admit(caller, &mut admitted.envelope, body_len, session)
            .await
            .map_err(|e| (e, None, admitted.class))?,
        None => Default::default(),
    };
    admitted.envelope.limits = granted.ticket;
    let headroom = granted.headroom;
    stages::mark(&mut stages, "limits");
    // An upload is stored once its request is admitted and counted, before
    // the request is queued (its worker reads it from the blob store).
    if !uploads.is_empty()
        && let Err(e) = Box::pin(crate::surface::form::store(state, &uploads)).await
    {
        if let (Some(r), Some(ticket)) = (&state.rate_limits, admitted.envelope.limits.take()) {
            r.give_back(request_id, ticket);
        }
        return Err((e, None, admitted.class));
    }
    // The response cache: after limits (a hit counts as a request), before
    // anything is published.
    let cache = match (&state.cache, directives) {
        (Some(c), Some(d)) => c.plan(
            d,
            caller,
            &mut admitted.envelope,
            &admitted.route_header,
            admitted.base64,
        ),
        _ => crate::cache::Plan::Off,
    };
    // Every answer, error or not, says how much of its limits is left.
    match answer(
        state,
        surface,
        request_id,
        admitted,
        granted.lease,
        trace,
        (received, stages),
        (cache, caller),
    )
    .await
    {
        Ok(mut resp) => {
            headroom.apply(surface, resp.headers_mut());
            Ok(resp)
        }
        Err((mut e, start, class)) => {
            e.headers.extend(headroom.headers(surface));
            Err((e, start, class))
        }
    }
}

/// Publishes an admitted request and answers it from its reply frames (or
/// from the response cache).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn answer(
    state: &Arc<AppState>,
    surface: ApiSurface,
    request_id: Uuid,
    admitted: admission::Admitted,
    lease: Option<crate::ratelimit::Lease>,
    trace: sy_telemetry::trace::Span,
    (received, mut stages): (std::time::Instant, Option<Stages>),
    (cache, caller): (crate::cache::Plan, &extract::Caller),
) -> Result<Response, ChatError> {
    let admission::Admitted {
        mut envelope,
        class,
        route_header,
        base64,
        origin,
    } = admitted;
    let span = tracing::Span::current();
    span.record("model", tracing::field::display(&envelope.request.model));
    span.record("stream", envelope.request.is_stream());
    if let (Some(c), crate::cache::Plan::On(ask)) = (&state.cache, &cache)
        && let Some(entry) = c.lookup(ask).await
    {
        // A billed hit's usage row is stored before it is answered (a hit
        // that cannot be recorded is served as a miss); a free one's right
        // after (no money rides on it, and it saves a JetStream round trip).
        let event = c.hit_event(&entry, caller, &envelope, trace.trace_id());
        let recorded = if event.billed_nanos == Some(0) {
            c.record_free(event);
            Ok(())
        } else {
            state.bus.publish_usage(&event).await
        };
        match recorded {
            Ok(()) => {
                let mut resp =
                    with_headers(crate::cache::hit_response(&entry), request_id, None, class);
                // A hit's stages end with its lookup and answer (`relay`).
                if let Some(v) = stages.as_mut().and_then(Stages::header) {
                    resp.headers_mut().insert(hdr::SERVER_TIMING, v);
                }
                return Ok(with_route(resp, &route_header));
            }
            Err(e) => {
                tracing::warn!(error = %e, "A cache hit's usage could not be stored; answering uncached.");
            }
        }
    }
    let deadline = tokio::time::Instant::now() + state.request_timeout;
    let stream = envelope.request.is_stream();
    let include_usage = envelope.request.wants_stream_usage();
    // Register before publishing so that no frame can arrive unseen.
    let rx = state
        .replies
        .register(request_id, sy_protocol::REPLY_BUFFER_FRAMES);
    // The queue hop is a span of its own; the worker's continues it.
    let publish = if trace.is_on() {
        trace.producer(
            &state.bus.request_subject(&envelope),
            &sy_protocol::UsageEvent::event_id_of(request_id, envelope.attempt),
        )
    } else {
        sy_telemetry::trace::Span::off()
    };
    stages::mark(&mut stages, "prepare");
    let published = match sy_bus::encode_request(&envelope) {
        Ok(payload) => {
            if let Some(s) = &mut stages {
                s.sent();
            }
            publish_encoded(
                state,
                &mut envelope,
                payload,
                publish.traceparent().as_deref(),
                deadline,
            )
            .await
        }
        Err(e) => Err(not_queued(state, &mut envelope, e)),
    };
    if published.is_err() {
        publish.fail("internal");
    }
    publish.end();
    published.map_err(|e| (e, None, class))?;
    tracing::trace!("Request published.");
    if let Some(s) = &mut stages {
        s.acked();
    }
    let mut pending = Pending::new(rx, state.bus.clone(), deadline);
    pending.hold(lease);
    let first = pending.next().await.map_err(|e| (e, None, class))?;
    tracing::trace!("First frame received.");
    trace.event("switchyard.first_frame", &[]);
    let start = start_of(&first).cloned();
    if let Some(s) = &mut stages {
        s.first_frame(start.as_ref());
    }
    let names = answer_meta(start.as_ref(), request_id, &envelope.upstream_model);
    if let ReplyFrame::Final(f) = &first
        && let Some(e) = &f.error
    {
        return Err((ApiError::from_frame(e), start, class));
    }
    if let Some(s) = &start {
        added_latency(surface, stream, s, received);
    }
    let tap = match (&state.cache, &cache) {
        (Some(c), crate::cache::Plan::On(ask)) => c.tap(ask, &envelope, start.as_ref()),
        _ => None,
    };
    let resp = match (surface, stream) {
        (ApiSurface::Messages, true) => {
            sse_response(pending, first, messages::MessagesEncoder::new(names), tap)
        }
        (ApiSurface::Responses, true) => {
            sse_response(pending, first, responses::ResponsesEncoder::new(names), tap)
        }
        (_, true) => sse_response(pending, first, SseEncoder::new(names, include_usage), tap),
        (ApiSurface::Speech, _) => crate::surface::audio::speech_response(
            pending,
            first,
            envelope.speech.as_ref().map_or(
                "audio/mpeg",
                sy_protocol::audio::SpeechRequest::content_type,
            ),
        ),
        // Boxed, as the form readers are: rare paths, large futures.
        (ApiSurface::Transcriptions | ApiSurface::Translations, _) => {
            Box::pin(crate::surface::audio::respond(pending, first))
                .await
                .map_err(|e| (e, start.clone(), class))?
        }
        (ApiSurface::Images | ApiSurface::ImageEdits, _) => {
            Box::pin(crate::surface::images::respond(
                state,
                pending,
                first,
                envelope.images.as_ref(),
                origin.as_deref(),
            ))
            .await
            .map_err(|e| (e, start.clone(), class))?
        }
        (surface, false) => json_response(surface, pending, first, &names, base64, tap)
            .await
            .map_err(|e| (e, start.clone(), class))?,
    };
    let mut resp = with_headers(resp, request_id, start.as_ref(), class);
    crate::cache::mark(&mut resp, &cache);
    if let Some(v) = stages.as_mut().and_then(Stages::header) {
        resp.headers_mut().insert(hdr::SERVER_TIMING, v);
    }
    Ok(with_route(resp, &route_header))
}

/// Names the route that served in `x-switchyard-route`.
fn with_route(mut resp: Response, route: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(route) {
        resp.headers_mut().insert(hdr::ROUTE, v);
    }
    resp
}

/// Publishes an admitted request; one the queue does not take gives back
/// what its limits reserved, and gets the client's error.
pub(crate) async fn publish_request(
    state: &AppState,
    envelope: &mut sy_protocol::RequestEnvelope,
    traceparent: Option<&str>,
    deadline: tokio::time::Instant,
) -> Result<(), ApiError> {
    match sy_bus::encode_request(envelope) {
        Ok(payload) => publish_encoded(state, envelope, payload, traceparent, deadline).await,
        Err(e) => Err(not_queued(state, envelope, e)),
    }
}

/// [`publish_request`] of an envelope serialised already (`payload`).
async fn publish_encoded(
    state: &AppState,
    envelope: &mut sy_protocol::RequestEnvelope,
    payload: bytes::Bytes,
    traceparent: Option<&str>,
    deadline: tokio::time::Instant,
) -> Result<(), ApiError> {
    match state
        .bus
        .publish_encoded_retrying(envelope, payload, traceparent, deadline)
        .await
    {
        Ok(()) => Ok(()),
        Err(e) => Err(not_queued(state, envelope, e)),
    }
}

/// A request the queue did not take gives back what its limits reserved;
/// the client's error.
fn not_queued(
    state: &AppState,
    envelope: &mut sy_protocol::RequestEnvelope,
    e: BusError,
) -> ApiError {
    if let (Some(r), Some(ticket)) = (&state.rate_limits, envelope.limits.take()) {
        r.give_back(envelope.request_id, ticket);
    }
    queue_error(state, e)
}

/// The client's error for a request the queue did not take (a stream the
/// server lost is recreated in the background for the next request).
pub(crate) fn queue_error(state: &AppState, e: BusError) -> ApiError {
    match e {
        BusError::PayloadTooLarge => ApiError::new(
            ErrorCode::PayloadTooLarge,
            "The request is larger than the message bus accepts.",
        ),
        BusError::Unavailable | BusError::NoStream => {
            if matches!(e, BusError::NoStream) {
                // The server lost the stream (e.g. restarted without its store):
                // recreate it so the next request goes through.
                let bus = state.bus.clone();
                tokio::spawn(async move {
                    if let Err(e) = bus.ensure_request_stream().await {
                        tracing::warn!(error = %e, "Recreating the request stream failed.");
                    }
                });
            }
            ApiError {
                retry_after_secs: Some(1),
                ..ApiError::new(
                    ErrorCode::BusUnavailable,
                    "The request queue is unavailable; retry shortly.",
                )
            }
        }
        other => {
            tracing::error!(error = %other, "Publishing a request failed.");
            ApiError::new(
                ErrorCode::BusUnavailable,
                "The request could not be queued.",
            )
        }
    }
}

/// Records what Switchyard added before the first frame of an answer its
/// first attempt gave (a retry's or a fallback's earlier attempts are not the
/// gateway's own cost; an error has no provider time to subtract): the time
/// since the request's body was read less the worker's time from its
/// provider call to that frame.
fn added_latency(
    surface: ApiSurface,
    stream: bool,
    start: &StartInfo,
    received: std::time::Instant,
) {
    let Some(upstream_us) = start.upstream_us.filter(|_| start.attempt == 1) else {
        return;
    };
    let ours = received.elapsed().as_micros() as f64 - upstream_us as f64;
    let surface = match surface {
        ApiSurface::ChatCompletions => "chat_completions",
        ApiSurface::Messages => "messages",
        ApiSurface::Responses => "responses",
        ApiSurface::Embeddings => "embeddings",
        ApiSurface::Rerank => "rerank",
        ApiSurface::Images => "images",
        ApiSurface::ImageEdits => "image_edits",
        ApiSurface::Transcriptions => "transcriptions",
        ApiSurface::Translations => "translations",
        ApiSurface::Speech => "speech",
    };
    sy_telemetry::metrics::get()
        .added_latency
        .get_or_create(&[
            ("surface", surface.to_owned()),
            ("stream", stream.to_string()),
        ])
        .observe(ours.max(0.0) / 1e6);
}
