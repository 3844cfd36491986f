//! Writing answers: a non-streamed answer as one JSON body in the client's
//! format, a streamed one as server-sent events, and Switchyard's response
//! headers.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use sy_protocol::{ApiSurface, ErrorCode, ReplyFrame, StartInfo, header as hdr};
use uuid::Uuid;

use crate::cache::Tap;
use crate::error::ApiError;
use crate::relay::{Aggregate, Pending, StreamEncoder};
use crate::surface::{chat, embeddings, messages, rerank, responses};
use sy_protocol::ResponseMeta;

/// Switchyard's response headers: the request id, the class, and who answered.
pub(crate) fn with_headers(
    mut resp: Response,
    request_id: Uuid,
    start: Option<&StartInfo>,
    class: Option<sy_classifier::Class>,
) -> Response {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id.to_string()) {
        h.insert(hdr::REQUEST_ID, v);
    }
    if let Some(c) = class {
        h.insert(hdr::CLASS, HeaderValue::from_static(c.as_str()));
    }
    if let Some(s) = start {
        if let Ok(v) = HeaderValue::from_str(&s.provider) {
            h.insert(hdr::PROVIDER, v);
        }
        if let Ok(v) = HeaderValue::from_str(&s.upstream_model) {
            h.insert(hdr::MODEL, v);
        }
        h.insert(hdr::ATTEMPTS, HeaderValue::from(s.attempt));
    }
    resp
}

/// The start info a frame carries (the first frame of an answer).
pub(crate) fn start_of(frame: &ReplyFrame) -> Option<&StartInfo> {
    match frame {
        ReplyFrame::Chunk(c) => c.start.as_ref(),
        ReplyFrame::Embedding(e) => e.start.as_ref(),
        ReplyFrame::Rerank(r) => r.start.as_ref(),
        ReplyFrame::Image(i) => i.start.as_ref(),
        ReplyFrame::Text(t) => t.start.as_ref(),
        ReplyFrame::Bytes(b) => b.start.as_ref(),
        ReplyFrame::Final(f) => f.start.as_ref(),
    }
}

/// A non-streamed answer: waits for every frame, then one JSON body.
pub(crate) async fn json_response(
    surface: ApiSurface,
    mut pending: Pending,
    first: ReplyFrame,
    names: &ResponseMeta,
    base64: bool,
    tap: Option<Tap>,
) -> Result<Response, ApiError> {
    let mut frames = vec![first];
    while !matches!(frames.last(), Some(ReplyFrame::Final(_))) {
        frames.push(pending.next().await?);
    }
    let tap = tap.map(|mut t| {
        frames.iter().for_each(|f| t.frame(f));
        (t, frames.last().cloned())
    });
    let body = answer_body(surface, frames, names, base64)?;
    if let Some((mut t, Some(last))) = tap {
        t.bytes(&body);
        t.finish(&last, "application/json");
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// The JSON body a client that did not stream gets for an answer's frames
/// (ending with the final frame), or the error the final frame carries.
pub(crate) fn answer_body(
    surface: ApiSurface,
    frames: Vec<ReplyFrame>,
    names: &ResponseMeta,
    base64: bool,
) -> Result<Vec<u8>, ApiError> {
    let mut agg = Aggregate::default();
    let mut vectors = Vec::new();
    let mut ranking = None;
    let mut end = None;
    for frame in frames {
        match frame {
            ReplyFrame::Chunk(c) => agg.add(c.choices),
            ReplyFrame::Embedding(e) => vectors.push(e),
            ReplyFrame::Rerank(r) => ranking = Some(r),
            // Images are answered by `images::respond` (blobs need reading),
            // transcripts by `audio::respond`.
            ReplyFrame::Image(_) | ReplyFrame::Text(_) | ReplyFrame::Bytes(_) => {}
            ReplyFrame::Final(f) => {
                if let Some(e) = &f.error {
                    return Err(ApiError::from_frame(e));
                }
                end = Some((f.usage, f.finish_reason));
                break;
            }
        }
    }
    let Some((usage, finish)) = end else {
        return Err(ApiError::new(
            ErrorCode::Internal,
            "the answer ended without its final frame",
        ));
    };
    let first_choice = |agg: Aggregate| {
        let mut choice = agg.into_first();
        if let Some(c) = &mut choice
            && c.finish_reason.is_none()
        {
            c.finish_reason = finish;
        }
        choice
    };
    Ok(match surface {
        ApiSurface::Messages => messages::body(first_choice(agg), names, usage.as_ref()),
        ApiSurface::Responses => responses::body(first_choice(agg), names, usage.as_ref()),
        ApiSurface::Embeddings => embeddings::body(vectors, base64, names, usage.as_ref()),
        ApiSurface::Images
        | ApiSurface::ImageEdits
        | ApiSurface::Transcriptions
        | ApiSurface::Translations
        | ApiSurface::Speech => {
            return Err(ApiError::new(
                ErrorCode::Internal,
                "images and transcripts are not answered here",
            ));
        }
        ApiSurface::Rerank => match ranking {
            Some(r) => rerank::body(r, names, usage.as_ref()),
            None => {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    "the rerank answer came without its ranking",
                ));
            }
        },
        _ => chat::body(agg.into_choices(), names, usage.as_ref()),
    })
}

struct SseState<E> {
    pending: Pending,
    encoder: E,
    first: Option<ReplyFrame>,
    done: bool,
    /// Records the stream for the response cache.
    tap: Option<Tap>,
}

/// A streamed answer: each frame encoded as it arrives, in the surface's events.
pub(crate) fn sse_response<E: StreamEncoder>(
    pending: Pending,
    first: ReplyFrame,
    encoder: E,
    tap: Option<Tap>,
) -> Response {
    let state = SseState {
        pending,
        encoder,
        first: Some(first),
        done: false,
        tap,
    };
    let events = futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let frame = match st.first.take() {
            Some(f) => Ok(f),
            None => st.pending.next().await,
        };
        let bytes = match &frame {
            Ok(ReplyFrame::Chunk(c)) => {
                if let Some(start) = &c.start {
                    // The first frame's names are the encoder's already; a
                    // later start is a fallback continuing the stream.
                    st.encoder.continued_by(start);
                }
                st.encoder.chunk(&c.choices)
            }
            // Never in a chat stream.
            Ok(
                ReplyFrame::Embedding(_)
                | ReplyFrame::Rerank(_)
                | ReplyFrame::Image(_)
                | ReplyFrame::Text(_)
                | ReplyFrame::Bytes(_),
            ) => Bytes::new(),
            Ok(ReplyFrame::Final(f)) => {
                st.done = true;
                match &f.error {
                    Some(e) => st.encoder.error(&ApiError::from_frame(e)),
                    None => st
                        .encoder
                        .finish(f.finish_reason.as_deref(), f.usage.as_ref()),
                }
            }
            Err(e) => {
                st.done = true;
                st.encoder.error(e)
            }
        };
        if let (Some(t), Ok(f)) = (st.tap.as_mut(), &frame) {
            t.frame(f);
            t.bytes(&bytes);
        }
        if st.done
            && let (Some(t), Ok(f)) = (st.tap.take(), &frame)
        {
            t.finish(f, "text/event-stream");
        }
        Some((Ok::<_, Infallible>(bytes), st))
    });
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(events),
    )
        .into_response()
}
