//! From reply frames to the client: sequencing, deadline, cancel on abandon,
//! aggregation of a non-streamed answer, and the encoder trait each client
//! API's streamed format implements (`surface::*`).

use bytes::Bytes;
use serde_json::{Map, Value};
use sy_bus::{Bus, ReplyReceiver};
use sy_protocol::TokenUsage;
use sy_protocol::chat::{ChoiceDelta, Delta, Role};
use sy_protocol::{
    Cancel, CancelReason, ErrorCode, ReplyFrame, ResponseMeta, StartInfo, now_unix_ms,
};
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::ApiError;

/// A request whose frames are awaited. Dropping it before the final frame (the
/// client went away, or the ingress gave up) tells the workers to stop.
pub struct Pending {
    rx: ReplyReceiver,
    next_seq: u32,
    deadline: Instant,
    bus: Bus,
    request_id: Uuid,
    finished: bool,
    cancel_reason: CancelReason,
    /// The request's concurrency lease, released when this is dropped.
    lease: Option<crate::ratelimit::Lease>,
}

impl Pending {
    /// Starts waiting; `rx` must be registered before the request was published.
    pub fn new(rx: ReplyReceiver, bus: Bus, deadline: Instant) -> Self {
        Pending {
            request_id: rx.request_id(),
            rx,
            next_seq: 0,
            deadline,
            bus,
            finished: false,
            cancel_reason: CancelReason::ClientDisconnected,
            lease: None,
        }
    }

    /// Holds the request's concurrency lease until the answer ends.
    pub(crate) fn hold(&mut self, lease: Option<crate::ratelimit::Lease>) {
        self.lease = lease;
    }

    /// The next frame in order. A lost or reordered frame, a cut-off receiver
    /// or the deadline end the request with an error (and a cancel).
    pub async fn next(&mut self) -> Result<ReplyFrame, ApiError> {
        let bytes = match tokio::time::timeout_at(self.deadline, self.rx.recv()).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                self.cancel_reason = CancelReason::ReplyBroken;
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    "the reply stream was cut off because it was read too slowly",
                ));
            }
            Err(_) => {
                self.cancel_reason = CancelReason::DeadlineExceeded;
                return Err(ApiError::new(
                    ErrorCode::DeadlineExceeded,
                    "the request did not finish before its deadline",
                ));
            }
        };
        let frame: ReplyFrame = serde_json::from_slice(&bytes).map_err(|e| {
            self.cancel_reason = CancelReason::ReplyBroken;
            tracing::error!(error = %e, "Unreadable reply frame.");
            ApiError::new(
                ErrorCode::Internal,
                "a worker sent an unreadable reply frame",
            )
        })?;
        if frame.seq() != self.next_seq {
            self.cancel_reason = CancelReason::ReplyBroken;
            tracing::warn!(
                expected = self.next_seq,
                got = frame.seq(),
                "Reply frames lost or out of order."
            );
            return Err(ApiError::new(
                ErrorCode::Internal,
                "reply frames were lost on the way; the answer is incomplete",
            ));
        }
        self.next_seq += 1;
        if matches!(frame, ReplyFrame::Final(_)) {
            self.finished = true;
        }
        Ok(frame)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let cancel = Cancel {
            request_id: self.request_id,
            reason: self.cancel_reason,
        };
        let bus = self.bus.clone();
        tracing::debug!(request_id = %self.request_id, reason = ?cancel.reason, "Cancelling abandoned request.");
        tokio::spawn(async move {
            if let Err(e) = bus.publish_cancel(&cancel).await {
                tracing::warn!(error = %e, "Publishing a cancel failed.");
            }
        });
    }
}

/// The answer's identity as clients see it: the provider's names from the
/// first frame's start info, with what the provider did not say filled in
/// (an id from the request id, the time now, the upstream `model`).
pub fn answer_meta(start: Option<&StartInfo>, request_id: Uuid, model: &str) -> ResponseMeta {
    let given = start.map(|s| &s.response);
    ResponseMeta {
        response_id: Some(
            given
                .and_then(|r| r.response_id.clone())
                .unwrap_or_else(|| format!("chatcmpl-{}", request_id.as_simple())),
        ),
        created: Some(
            given
                .and_then(|r| r.created)
                .unwrap_or_else(|| (now_unix_ms() / 1000) as i64),
        ),
        served_model: Some(
            given
                .and_then(|r| r.served_model.clone())
                .unwrap_or_else(|| model.to_owned()),
        ),
        system_fingerprint: given.and_then(|r| r.system_fingerprint.clone()),
    }
}

/// One choice of a non-streamed answer, whole.
#[derive(Debug, Default)]
pub struct AggregatedChoice {
    /// The role (the assistant's, unless a provider says otherwise).
    pub role: Option<Role>,
    /// The text.
    pub content: Option<String>,
    /// A refusal.
    pub refusal: Option<String>,
    /// Tool calls, in order.
    pub tool_calls: Vec<AggregatedCall>,
    /// Why it ended.
    pub finish_reason: Option<String>,
    /// Log probabilities, as the provider sent them.
    pub logprobs: Option<Value>,
    /// Other fields (e.g. `reasoning_content`).
    pub extra: Map<String, Value>,
}

/// One whole tool call.
#[derive(Debug, Default)]
pub struct AggregatedCall {
    /// Its id.
    pub id: String,
    /// Its type (empty when the provider gave none).
    pub kind: String,
    /// The function.
    pub name: String,
    /// JSON arguments.
    pub arguments: String,
}

/// Collects deltas into whole messages for a non-streamed answer.
#[derive(Debug, Default)]
pub struct Aggregate {
    choices: Vec<ChoiceAcc>,
}

#[derive(Debug, Default)]
struct ChoiceAcc {
    role: Option<Role>,
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: Vec<ToolAcc>,
    finish_reason: Option<String>,
    logprobs: Option<Value>,
    extra: Map<String, Value>,
}

#[derive(Debug, Default)]
struct ToolAcc {
    id: String,
    kind: String,
    name: String,
    arguments: String,
}

impl Aggregate {
    /// Adds one frame's deltas.
    pub fn add(&mut self, choices: Vec<ChoiceDelta>) {
        for c in choices {
            let i = c.index as usize;
            if self.choices.len() <= i {
                self.choices.resize_with(i + 1, ChoiceAcc::default);
            }
            let acc = &mut self.choices[i];
            let Delta {
                role,
                content,
                refusal,
                tool_calls,
                extra,
            } = c.delta;
            if role.is_some() {
                acc.role = role;
            }
            if let Some(t) = content {
                acc.content.get_or_insert_with(String::new).push_str(&t);
            }
            if let Some(t) = refusal {
                acc.refusal.get_or_insert_with(String::new).push_str(&t);
            }
            for tc in tool_calls.unwrap_or_default() {
                let j = tc.index as usize;
                if acc.tool_calls.len() <= j {
                    acc.tool_calls.resize_with(j + 1, ToolAcc::default);
                }
                let t = &mut acc.tool_calls[j];
                if let Some(id) = tc.id {
                    t.id = id;
                }
                if let Some(k) = tc.kind {
                    t.kind = k;
                }
                if let Some(f) = tc.function {
                    if let Some(n) = f.name {
                        t.name.push_str(&n);
                    }
                    if let Some(a) = f.arguments {
                        t.arguments.push_str(&a);
                    }
                }
            }
            for (k, v) in extra {
                match (acc.extra.get_mut(&k), v) {
                    (Some(Value::String(s)), Value::String(more)) => s.push_str(&more),
                    (_, v) => {
                        acc.extra.insert(k, v);
                    }
                }
            }
            if c.finish_reason.is_some() {
                acc.finish_reason = c.finish_reason;
            }
            if c.logprobs.is_some() {
                acc.logprobs = c.logprobs;
            }
        }
    }

    /// Every choice, whole, in index order.
    pub fn into_choices(self) -> Vec<AggregatedChoice> {
        self.choices
            .into_iter()
            .map(|c| AggregatedChoice {
                role: c.role,
                content: c.content,
                refusal: c.refusal,
                tool_calls: c
                    .tool_calls
                    .into_iter()
                    .map(|t| AggregatedCall {
                        id: t.id,
                        kind: t.kind,
                        name: t.name,
                        arguments: t.arguments,
                    })
                    .collect(),
                finish_reason: c.finish_reason,
                logprobs: c.logprobs,
                extra: c.extra,
            })
            .collect()
    }

    /// Choice 0, whole (for APIs without `n`).
    pub fn into_first(self) -> Option<AggregatedChoice> {
        self.into_choices().into_iter().next()
    }
}

/// One piece of choice 0's output, as the formats that rebuild the answer
/// block by block (Messages, Responses) take it.
pub(crate) enum Piece<'a> {
    /// Reasoning text.
    Reasoning(&'a str),
    /// Answer text (or refusal text).
    Text(&'a str),
    /// A tool call: its id and name on its first piece, then arguments.
    Call {
        /// The call's index among the answer's calls.
        index: u32,
        /// Its id (first piece).
        id: Option<&'a str>,
        /// The function (first piece).
        name: Option<&'a str>,
        /// A fragment of the JSON arguments (may be empty).
        arguments: &'a str,
    },
}

/// Calls `f` with each non-empty piece of choice 0 in a frame's deltas, in
/// order; returns the finish reason if one of them carried it.
pub(crate) fn each_piece<'a>(
    choices: &'a [ChoiceDelta],
    mut f: impl FnMut(Piece<'a>),
) -> Option<&'a str> {
    let mut finish = None;
    for c in choices.iter().filter(|c| c.index == 0) {
        let d = &c.delta;
        if let Some(Value::String(t)) = d.extra.get("reasoning_content")
            && !t.is_empty()
        {
            f(Piece::Reasoning(t));
        }
        for t in [&d.content, &d.refusal].into_iter().flatten() {
            if !t.is_empty() {
                f(Piece::Text(t));
            }
        }
        for tc in d.tool_calls.iter().flatten() {
            let func = tc.function.as_ref();
            f(Piece::Call {
                index: tc.index,
                id: tc.id.as_deref(),
                name: func.and_then(|f| f.name.as_deref()),
                arguments: func
                    .and_then(|f| f.arguments.as_deref())
                    .unwrap_or_default(),
            });
        }
        if c.finish_reason.is_some() {
            finish = c.finish_reason.as_deref();
        }
    }
    finish
}

/// Renders a streamed answer in one client API's SSE format.
pub trait StreamEncoder: Send + 'static {
    /// The events for one frame's deltas.
    fn chunk(&mut self, choices: &[ChoiceDelta]) -> Bytes;
    /// The end of a successful stream.
    fn finish(&mut self, finish_reason: Option<&str>, usage: Option<&TokenUsage>) -> Bytes;
    /// An error ending the stream.
    fn error(&mut self, e: &ApiError) -> Bytes;
    /// Another target continues the stream (mid-stream recovery): later
    /// events name the model that produces them, where the format names one
    /// per event.
    fn continued_by(&mut self, _start: &StartInfo) {}
}
