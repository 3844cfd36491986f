//! Multi-step pipelines (issue 20; docs/pipelines.md): a request to the
//! model `pipeline:<name>` runs the pipeline's steps in order, each a chat
//! request of its own through admission, limits, the queue, the workers,
//! retries and fallback, with a usage row linked to the run (its id and the
//! step's name). Every step but the last is collected whole; the last one
//! answers the client in its own API, streamed if it asked. A step that
//! fails ends the run with an error naming the step. The run (each step's
//! request id, model, provider, output or error) is kept in the NATS KV
//! bucket `<NS>_PIPELINE_RUNS` for [`RUN_MAX_AGE`] and readable by the
//! caller's project at `GET /v1/pipelines/runs/{id}`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use sy_config::pipeline::Pipeline;
use sy_protocol::chat::{ChatRequest, Content, Message, Role};
use sy_protocol::{ApiSurface, ErrorCode, PipelineStep, ReplyFrame, now_unix_ms};
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::Caller;
use crate::relay::{Aggregate, Pending};
use crate::state::AppState;
use crate::{admission, flow};

/// The response header naming the run.
pub const RUN_HEADER: &str = "x-switchyard-pipeline-run";

/// How long a run stays readable.
pub const RUN_MAX_AGE: Duration = Duration::from_secs(7 * 86_400);

/// A run as it is kept and shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Run {
    pub id: String,
    pub object: String,
    pub pipeline: String,
    /// `running`, `completed` (the last step answered) or `failed`.
    pub status: String,
    /// Unix seconds.
    pub created: u64,
    /// Who ran it: the key, and for a tenant's key its project.
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    pub steps: Vec<StepRecord>,
}

/// One step of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StepRecord {
    pub name: String,
    pub model: String,
    pub request_id: String,
    /// `completed`, `failed`, or `answering` (the last step: its answer
    /// went to the client and is not kept).
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
}

/// Why a step failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StepError {
    pub code: ErrorCode,
    pub message: String,
}

/// The client's input: its last user message's text.
fn input_of(request: &ChatRequest) -> String {
    request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(Message::text)
        .unwrap_or_default()
}

fn message(role: Role, text: String) -> Message {
    Message {
        role,
        content: Some(Content::Text(text)),
        ..Message::assistant_text("")
    }
}

/// The request of step `i`: the client's, with the step's model, messages
/// and caps; every step but the last is not streamed and calls no tools.
fn step_request(
    client: &ChatRequest,
    pipeline: &Pipeline,
    i: usize,
    input: &str,
    outputs: &[String],
) -> ChatRequest {
    let step = &pipeline.steps[i];
    let last = i + 1 == pipeline.steps.len();
    let mut r = client.clone();
    r.model = step.model.clone();
    r.messages = step
        .system
        .as_ref()
        .map(|s| message(Role::System, s.render(input, outputs)))
        .into_iter()
        .chain(std::iter::once(message(
            Role::User,
            step.prompt.render(input, outputs),
        )))
        .collect();
    if !last {
        r.stream = None;
        r.stream_options = None;
        r.tools = None;
        r.tool_choice = None;
        r.response_format = None;
        r.n = None;
        // What only makes sense with tools goes with them.
        r.extra.remove("parallel_tool_calls");
    }
    if let Some(cap) = step.max_tokens {
        let client_cap = r.max_completion_tokens.or(r.max_tokens);
        r.max_tokens = Some(client_cap.map_or(cap, |c| c.min(cap)));
        r.max_completion_tokens = None;
    }
    if let Some(t) = step.temperature {
        r.temperature = Some(t);
    }
    // A thinking budget must stay under the step's output cap.
    if let (Some(budget), Some(cap)) = (r.thinking_budget, r.max_tokens)
        && budget >= cap
    {
        r.thinking_budget = None;
    }
    r
}

/// The error of a failed step, naming it (its status and code kept).
fn step_failed(pipeline: &Pipeline, step: &str, e: ApiError) -> ApiError {
    ApiError {
        message: format!(
            "Step '{step}' of pipeline '{}' failed: {}",
            pipeline.name, e.message
        ),
        ..e
    }
}

/// How a run's last step answers.
pub(crate) enum Finish<'a> {
    /// The HTTP client, in its API, streamed if it asked.
    Client {
        headers: &'a HeaderMap,
        trace: sy_telemetry::trace::Span,
    },
    /// A batch: the last step is the item (its result goes to the batch, at
    /// the batch price); the earlier ones run as interactive requests.
    Batch {
        item: sy_protocol::batch::BatchItem,
        expires_ms: u64,
    },
}

/// Runs `pipeline` for the client request `client` (already parsed and
/// validated); answers in `surface`'s format.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    state: &Arc<AppState>,
    surface: ApiSurface,
    request_id: Uuid,
    caller: &Caller,
    client: ChatRequest,
    pipeline: Arc<Pipeline>,
    headers: &HeaderMap,
    trace: sy_telemetry::trace::Span,
) -> Result<Response, flow::ChatError> {
    let finish = Finish::Client { headers, trace };
    match drive(
        state, surface, request_id, caller, client, &pipeline, finish,
    )
    .await
    {
        Ok((Some(resp), _)) => Ok(resp),
        Ok((None, _)) => Err((
            ApiError::new(ErrorCode::Internal, "a pipeline answered nothing"),
            None,
            None,
        )),
        Err(e) => Err(e),
    }
}

/// Runs `pipeline` as the batch item `item` (the dispatcher's): the earlier
/// steps here, the last one published as the item. A step that fails is
/// the item's result, naming the step.
pub(crate) async fn run_batch_item(
    state: Arc<AppState>,
    surface: ApiSurface,
    caller: Caller,
    client: ChatRequest,
    pipeline: Arc<Pipeline>,
    item: sy_protocol::batch::BatchItem,
    expires_ms: u64,
) {
    let request_id = item.request_id();
    let finish = Finish::Batch {
        item: item.clone(),
        expires_ms,
    };
    if let Err((e, _, _)) = drive(
        &state, surface, request_id, &caller, client, &pipeline, finish,
    )
    .await
    {
        let result = crate::batch::dispatch::error_result(
            item,
            sy_protocol::FrameError::new(e.code, e.message),
        );
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Err(e) = state.bus.publish_batch_result(&result).await {
            if tokio::time::Instant::now() >= until {
                tracing::error!(error = %e, "A pipeline batch item's failure could not be stored; the batch redispatches it.");
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Runs every step; the last one's answer to an HTTP client, if that is
/// where it goes, and the run's id.
async fn drive(
    state: &Arc<AppState>,
    surface: ApiSurface,
    request_id: Uuid,
    caller: &Caller,
    client: ChatRequest,
    pipeline: &Pipeline,
    finish: Finish<'_>,
) -> Result<(Option<Response>, Uuid), flow::ChatError> {
    caller.may_use(&client.model).map_err(|e| (e, None, None))?;
    let (session, hints) = match &finish {
        Finish::Client { headers, .. } => (
            crate::ratelimit::session_of(headers).map_err(|e| (e, None, None))?,
            Some(*headers),
        ),
        Finish::Batch { .. } => (None, None),
    };
    // A batch item's ids are its own, the same when it is dispatched again
    // (a step published twice is one call).
    let batch_id = matches!(finish, Finish::Batch { .. });
    let run_id = if batch_id {
        Uuid::new_v5(&request_id, b"pipeline run")
    } else {
        Uuid::now_v7()
    };
    let input = input_of(&client);
    let mut record = Run {
        id: run_id.to_string(),
        object: "pipeline.run".into(),
        pipeline: pipeline.name.clone(),
        status: "running".into(),
        created: now_unix_ms() / 1000,
        key_id: caller.key_id.clone(),
        project_id: caller
            .grant
            .as_ref()
            .map(|g| g.owner.project_id.to_string()),
        steps: Vec::new(),
    };
    let mut outputs = Vec::new();
    let n = pipeline.steps.len();
    let mut finish = Some(finish);
    for (i, step) in pipeline.steps.iter().enumerate() {
        let last = i + 1 == n;
        let request = step_request(&client, pipeline, i, &input, &outputs);
        let step_id = match (last, batch_id) {
            (true, _) => request_id,
            (false, true) => Uuid::new_v5(&request_id, step.name.as_bytes()),
            (false, false) => Uuid::now_v7(),
        };
        let mut done = StepRecord {
            name: step.name.clone(),
            model: step.model.clone(),
            request_id: step_id.to_string(),
            status: "failed".into(),
            provider: None,
            upstream_model: None,
            output: None,
            error: None,
        };
        let ask = Ask {
            surface,
            request_id: step_id,
            caller,
            hints,
            session,
            run_id,
            step,
        };
        let result = if last {
            match finish.take() {
                Some(f) => last_step(state, ask, request, f).await,
                None => Err((
                    ApiError::new(ErrorCode::Internal, "a pipeline ran its last step twice"),
                    None,
                    None,
                )),
            }
        } else {
            earlier_step(state, ask, request, batch_id).await
        };
        match result {
            Ok(Outcome::Collected { text, provider }) => {
                done.status = "completed".into();
                if let Some((p, m)) = provider {
                    done.provider = Some(p);
                    done.upstream_model = Some(m);
                }
                done.output = Some(text.clone());
                outputs.push(text);
                record.steps.push(done);
                // Each finished step is readable at once.
                keep(state, &record).await;
            }
            Ok(Outcome::Answered(mut resp)) => {
                done.status = "answering".into();
                if let Some(resp) = &resp {
                    for (h, v) in [
                        (sy_protocol::header::PROVIDER, &mut done.provider),
                        (sy_protocol::header::MODEL, &mut done.upstream_model),
                    ] {
                        *v = resp
                            .headers()
                            .get(h)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                    }
                }
                record.steps.push(done);
                record.status = "completed".into();
                keep(state, &record).await;
                if let Some(resp) = &mut resp {
                    name_run(resp.headers_mut(), run_id);
                }
                return Ok((resp, run_id));
            }
            Err((e, start, class)) => {
                let mut e = step_failed(pipeline, &step.name, e);
                done.error = Some(StepError {
                    code: e.code,
                    message: e.message.clone(),
                });
                record.steps.push(done);
                record.status = "failed".into();
                keep(state, &record).await;
                if let Ok(v) = HeaderValue::from_str(&run_id.to_string()) {
                    e.headers
                        .push((axum::http::HeaderName::from_static(RUN_HEADER), v));
                }
                return Err((e, start, class));
            }
        }
    }
    Err((
        ApiError::new(ErrorCode::Internal, "a pipeline without steps"),
        None,
        None,
    ))
}

fn name_run(h: &mut HeaderMap, run_id: Uuid) {
    if let Ok(v) = HeaderValue::from_str(&run_id.to_string()) {
        h.insert(RUN_HEADER, v);
    }
}

/// What a step gave.
enum Outcome {
    /// An earlier step's text and who answered.
    Collected {
        text: String,
        provider: Option<(String, String)>,
    },
    /// The last step's answer to an HTTP client (none: a batch item's, which
    /// goes to its batch).
    Answered(Option<Response>),
}

/// One step to run.
struct Ask<'a> {
    surface: ApiSurface,
    request_id: Uuid,
    caller: &'a Caller,
    /// The client's headers (hints, tags), for an HTTP client's run.
    hints: Option<&'a HeaderMap>,
    session: Option<&'a str>,
    run_id: Uuid,
    step: &'a sy_config::pipeline::Step,
}

/// Admits a step's request and takes its limits.
fn admit_step(
    state: &Arc<AppState>,
    ask: &Ask<'_>,
    request: ChatRequest,
    batch: Option<sy_protocol::batch::BatchItem>,
    deadline_unix_ms: u64,
) -> Result<admission::Admitted, (ApiError, Option<sy_classifier::Class>)> {
    let received_unix_ms = now_unix_ms();
    let mut admitted = admission::admit_parsed(
        state,
        ask.surface,
        request,
        None,
        admission::Admission {
            request_id: ask.request_id,
            caller: ask.caller,
            hints: ask
                .hints
                .map(admission::Hints::from_headers)
                .unwrap_or_default(),
            received_unix_ms,
            deadline_unix_ms,
            batch,
        },
    )?;
    admitted.envelope.pipeline = Some(PipelineStep {
        run_id: ask.run_id.to_string(),
        step: ask.step.name.clone(),
    });
    Ok(admitted)
}

/// Counts a step against its key's limits and budgets (none without
/// `[redis]`); its ticket rides in the envelope.
async fn limit(
    state: &AppState,
    ask: &Ask<'_>,
    envelope: &mut sy_protocol::RequestEnvelope,
    size: usize,
    session: Option<&str>,
) -> Result<crate::ratelimit::Granted, ApiError> {
    let mut granted: crate::ratelimit::Granted = match &state.rate_limits {
        Some(r) => r.admit(ask.caller, envelope, size, session).await?,
        None => Default::default(),
    };
    envelope.limits = granted.ticket.take();
    Ok(granted)
}

/// The size a step's limits estimate its input from.
fn size_of(request: &ChatRequest) -> usize {
    request.messages.iter().map(|m| m.text().len()).sum()
}

/// Runs an earlier step and collects its text. In a batch, a step its
/// key's rate limits refuse waits and tries again (a batch waits for its
/// limits; it does not fail on them).
async fn earlier_step(
    state: &Arc<AppState>,
    ask: Ask<'_>,
    request: ChatRequest,
    in_batch: bool,
) -> Result<Outcome, flow::ChatError> {
    let size = size_of(&request);
    loop {
        let deadline = now_unix_ms() + state.request_timeout.as_millis() as u64;
        let mut admitted = admit_step(state, &ask, request.clone(), None, deadline)
            .map_err(|(e, c)| (e, None, c))?;
        let class = admitted.class;
        let granted = match limit(state, &ask, &mut admitted.envelope, size, ask.session).await {
            Ok(g) => g,
            Err(e) if in_batch && e.code == ErrorCode::RateLimited => {
                let wait = e.retry_after_secs.unwrap_or(1).clamp(1, 60);
                tokio::time::sleep(Duration::from_secs(wait)).await;
                continue;
            }
            Err(e) => return Err((e, None, class)),
        };
        return collect(state, admitted.envelope, granted.lease)
            .await
            .map_err(|e| (e, None, class));
    }
}

/// Runs the last step: to the HTTP client, or as the batch item.
async fn last_step(
    state: &Arc<AppState>,
    ask: Ask<'_>,
    request: ChatRequest,
    finish: Finish<'_>,
) -> Result<Outcome, flow::ChatError> {
    let size = size_of(&request);
    match finish {
        Finish::Client { trace, .. } => {
            // What Switchyard adds is this step's own time.
            let received = std::time::Instant::now();
            let deadline = now_unix_ms() + state.request_timeout.as_millis() as u64;
            let mut admitted =
                admit_step(state, &ask, request, None, deadline).map_err(|(e, c)| (e, None, c))?;
            let granted = limit(state, &ask, &mut admitted.envelope, size, ask.session)
                .await
                .map_err(|e| (e, None, admitted.class))?;
            let headroom = granted.headroom;
            let mut resp = flow::answer(
                state,
                ask.surface,
                ask.request_id,
                admitted,
                granted.lease,
                trace,
                (received, None),
                (crate::cache::Plan::Off, ask.caller),
            )
            .await?;
            headroom.apply(ask.surface, resp.headers_mut());
            Ok(Outcome::Answered(Some(resp)))
        }
        Finish::Batch { item, expires_ms } => {
            let admitted = admit_step(state, &ask, request, Some(item), expires_ms)
                .map_err(|(e, c)| (e, None, c))?;
            let class = admitted.class;
            let mut envelope = admitted.envelope;
            // A batch item is paced by its batch, not by the key's rate
            // limits; its cost counts against the budgets.
            limit(state, &ask, &mut envelope, size, None)
                .await
                .map_err(|e| (e, None, class))?;
            let deadline = tokio::time::Instant::now() + state.request_timeout;
            flow::publish_request(state, &mut envelope, None, deadline)
                .await
                .map_err(|e| (e, None, class))?;
            Ok(Outcome::Answered(None))
        }
    }
}

/// Publishes an earlier step and waits for its whole answer's text.
async fn collect(
    state: &Arc<AppState>,
    mut envelope: sy_protocol::RequestEnvelope,
    lease: Option<crate::ratelimit::Lease>,
) -> Result<Outcome, ApiError> {
    let deadline = tokio::time::Instant::now() + state.request_timeout;
    let rx = state
        .replies
        .register(envelope.request_id, sy_protocol::REPLY_BUFFER_FRAMES);
    flow::publish_request(state, &mut envelope, None, deadline).await?;
    let mut pending = Pending::new(rx, state.bus.clone(), deadline);
    pending.hold(lease);
    let mut agg = Aggregate::default();
    let mut provider = None;
    loop {
        match pending.next().await? {
            ReplyFrame::Chunk(c) => {
                if let Some(s) = &c.start {
                    provider = Some((s.provider.clone(), s.upstream_model.clone()));
                }
                agg.add(c.choices);
            }
            ReplyFrame::Embedding(_)
            | ReplyFrame::Rerank(_)
            | ReplyFrame::Image(_)
            | ReplyFrame::Text(_)
            | ReplyFrame::Bytes(_) => {}
            ReplyFrame::Final(f) => {
                if let Some(e) = &f.error {
                    return Err(ApiError::from_frame(e));
                }
                if let Some(s) = &f.start {
                    provider = Some((s.provider.clone(), s.upstream_model.clone()));
                }
                break;
            }
        }
    }
    let text = agg.into_first().and_then(|c| c.content).unwrap_or_default();
    Ok(Outcome::Collected { text, provider })
}

/// Stores the run's record (a failure is logged: the answer goes on).
async fn keep(state: &AppState, run: &Run) {
    let Some(store) = &state.pipeline_runs else {
        return;
    };
    let value = serde_json::to_vec(run).unwrap_or_default();
    if let Err(e) = store.put(&run.id, value.into()).await {
        tracing::warn!(error = %e, run = %run.id, "Could not keep a pipeline run's record.");
    }
}

/// `GET /v1/pipelines/runs/{id}`: a run of the caller's project (of the
/// caller's key, for a key of the config file); 404 for any other.
pub(crate) async fn get_run(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::new(
            ErrorCode::NotFound,
            format!("No pipeline run '{id}' for this project."),
        )
    };
    let id = Uuid::parse_str(id).map_err(|_| not_found())?.to_string();
    let store = state.pipeline_runs.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::BusUnavailable,
            "Pipeline runs cannot be read: their store could not be set up.",
        )
    })?;
    let raw = store.get(&id).await.map_err(|_| ApiError {
        retry_after_secs: Some(1),
        ..ApiError::new(
            ErrorCode::BusUnavailable,
            "Pipeline runs cannot be read now; retry shortly.",
        )
    })?;
    let run: Run = raw
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(not_found)?;
    let mine = match &caller.grant {
        Some(g) => run.project_id.as_deref() == Some(g.owner.project_id.to_string().as_str()),
        None => run.project_id.is_none() && run.key_id == caller.key_id,
    };
    if !mine {
        return Err(not_found());
    }
    Ok(axum::response::IntoResponse::into_response(axum::Json(run)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> Pipeline {
        use sy_config::pipeline::{Step, Template};
        Pipeline {
            name: "blog".into(),
            description: None,
            steps: vec![
                Step {
                    name: "draft".into(),
                    model: "a".into(),
                    prompt: Template::parse("Draft: {{input}}", &[]).unwrap(),
                    system: None,
                    max_tokens: Some(50),
                    temperature: None,
                },
                Step {
                    name: "rewrite".into(),
                    model: "b".into(),
                    prompt: Template::parse("Rewrite {{steps.draft}}", &["draft"]).unwrap(),
                    system: Some(Template::parse("Be brief.", &["draft"]).unwrap()),
                    max_tokens: None,
                    temperature: None,
                },
            ],
        }
    }

    #[test]
    fn a_steps_request_renders_its_prompt_and_keeps_the_clients_settings() {
        let client: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "pipeline:blog", "stream": true, "max_tokens": 30, "temperature": 0.2,
            "messages": [{"role": "system", "content": "ignored"},
                         {"role": "user", "content": "tides"}]
        }))
        .unwrap();
        let p = pipeline();
        let input = input_of(&client);
        assert_eq!(input, "tides");
        let first = step_request(&client, &p, 0, &input, &[]);
        assert_eq!(first.model, "a");
        assert_eq!(first.stream, None, "earlier steps are collected whole");
        assert_eq!(first.max_tokens, Some(30), "the client's cap when lower");
        assert_eq!(first.messages.len(), 1);
        assert_eq!(first.messages[0].text(), "Draft: tides");
        let last = step_request(&client, &p, 1, &input, &["D".into()]);
        assert_eq!(last.stream, Some(true), "the last step streams as asked");
        assert_eq!(last.messages[0].role, Role::System);
        assert_eq!(last.messages[1].text(), "Rewrite D");
        assert_eq!(last.temperature, Some(0.2));
    }
}
