//! What the ingress takes in before a handler runs: connections and bodies,
//! each bounded so that slow or greedy clients cannot hold the process; and
//! the reading of a whole body (`read_body`) with its Content-Type and
//! Content-Encoding checks.
//!
//! - **Connections**: at most `[server] max_connections` at once. One over the
//!   cap is answered `503` (`overloaded`, JSON, `Retry-After: 1`) and closed
//!   without its request being read.
//! - **Headers**: a connection must deliver a request's headers within
//!   `[server] header_timeout`, counted from the moment it is ready for one
//!   (so this is also how long an idle keep-alive connection stays open); then
//!   it is closed. No response is possible: there is no request to answer.
//! - **Bodies**: after a grace of `[server] body_timeout`, a body must keep
//!   arriving at `[server] min_body_rate` bytes per second on average since
//!   its headers came, and may never pause for longer than `body_timeout`; a
//!   slower one (or one that stops short of its `Content-Length`) is answered
//!   `408` (`request_timeout`).
//! - **Body bytes in flight**: every body byte received counts against
//!   `[server] max_body_bytes_in_flight`, shared by all requests, until the
//!   handler is done reading the body; a byte that does not fit gets the
//!   request `503` (`overloaded`, `Retry-After: 1`). Memory held by bodies
//!   being received is thereby bounded whatever clients do.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use sy_protocol::ErrorCode;

/// The bounds on connections and bodies (from `[server]`).
#[derive(Debug)]
pub(crate) struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time for a request's headers to arrive.
    pub header_timeout: Duration,
    /// Time a body may take before the minimum rate applies.
    pub body_timeout: Duration,
    /// Average bytes per second a body must arrive at after the grace.
    pub min_body_rate: u64,
    /// Body bytes received and not yet released, in all.
    budget: Arc<Semaphore>,
}

impl Limits {
    pub(crate) fn new(server: &sy_config::ServerConfig) -> Limits {
        Limits {
            max_connections: server.max_connections,
            header_timeout: server.header_timeout,
            body_timeout: server.body_timeout,
            min_body_rate: server.min_body_rate,
            budget: Arc::new(Semaphore::new(server.max_body_bytes_in_flight)),
        }
    }
}

/// Why the ingress stopped reading a request body.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyRefused {
    /// It arrived slower than the minimum rate (or stopped short).
    #[error(
        "the request body arrived slower than {min_rate} bytes per second, or paused for {grace_secs} s"
    )]
    TooSlow {
        /// `[server] min_body_rate`.
        min_rate: u64,
        /// `[server] body_timeout`, seconds.
        grace_secs: u64,
    },
    /// The bytes in flight of all requests are at their cap.
    #[error("the server is receiving as many request bodies as it can hold")]
    Busy,
}

impl BodyRefused {
    /// The refusal behind a body read error, if the error is one.
    pub(crate) fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyRefused> {
        let mut cur = Some(e);
        while let Some(e) = cur {
            if let Some(r) = e.downcast_ref::<BodyRefused>() {
                return Some(r);
            }
            cur = e.source();
        }
        None
    }

    /// What the client gets.
    pub(crate) fn api_error(&self) -> ApiError {
        match self {
            BodyRefused::TooSlow { .. } => ApiError::new(
                ErrorCode::RequestTimeout,
                format!("The request was not received in time: {self}."),
            ),
            BodyRefused::Busy => ApiError {
                retry_after_secs: Some(1),
                ..ApiError::new(
                    ErrorCode::Overloaded,
                    "The server is receiving as many request bodies as it can hold; retry shortly.",
                )
            },
        }
    }
}

/// Middleware: every request body is read through a [`Guarded`] body.
pub(crate) async fn guard_bodies(limits: Arc<Limits>, req: Request, next: Next) -> Response {
    if req.body().size_hint().exact() == Some(0) {
        return next.run(req).await;
    }
    let now = Instant::now();
    let req = req.map(|inner| {
        Body::new(Guarded {
            inner,
            limits,
            started: now,
            last: now,
            seen: 0,
            sleep: None,
            held: None,
        })
    });
    next.run(req).await
}

/// A request body that enforces the minimum rate and counts its bytes
/// against the shared budget (released when the body is dropped).
struct Guarded {
    inner: Body,
    limits: Arc<Limits>,
    started: Instant,
    /// When the last bytes came.
    last: Instant,
    seen: u64,
    /// The deadline for the next bytes; made only when the body waits.
    sleep: Option<Pin<Box<Sleep>>>,
    held: Option<OwnedSemaphorePermit>,
}

impl Guarded {
    /// When the next byte must have arrived: the grace plus the time the
    /// minimum rate allows for the bytes so far and one more, and no later
    /// than one grace after the last bytes (bytes sent fast early do not buy
    /// a long stall).
    fn deadline(&self) -> Instant {
        let rate = self.limits.min_body_rate.max(1);
        let allowed = Duration::from_secs_f64((self.seen + 1) as f64 / rate as f64);
        let by_rate = self.started + self.limits.body_timeout + allowed;
        by_rate.min(self.last + self.limits.body_timeout)
    }

    fn hold(&mut self, n: usize) -> Result<(), BodyRefused> {
        let n = u32::try_from(n).map_err(|_| BodyRefused::Busy)?;
        let permit = self
            .limits
            .budget
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| BodyRefused::Busy)?;
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        Ok(())
    }
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && !data.is_empty()
                {
                    let n = data.len();
                    if let Err(refused) = this.hold(n) {
                        return Poll::Ready(Some(Err(refused.into())));
                    }
                    this.seen += n as u64;
                    // The deadline moves with the bytes received.
                    this.last = Instant::now();
                    this.sleep = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this.deadline();
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyRefused::TooSlow {
                        min_rate: this.limits.min_body_rate,
                        grace_secs: this.limits.body_timeout.as_secs(),
                    }
                    .into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` on `listener` until `shutdown` fires, then stops accepting
/// and waits for the connections open to finish their requests.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "Accepting a connection failed.");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tokio::spawn(refuse(tcp, limits.max_connections));
            continue;
        };
        // Every request of the connection knows its client's address (a key
        // may be limited to some networks).
        let service = tower::ServiceExt::map_request(
            app.clone(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            },
        );
        let service = hyper_util::service::TowerToHyperService::new(service);
        let conn = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "Connection ended with an error.");
            }
            drop(permit);
        });
    }
    graceful.shutdown().await;
}

/// Answers a connection over the cap with a 503 and closes it.
async fn refuse(mut tcp: TcpStream, cap: usize) {
    let error = ApiError {
        retry_after_secs: Some(1),
        ..ApiError::new(
            ErrorCode::Overloaded,
            format!("The server holds its maximum of {cap} connections; retry shortly."),
        )
    };
    let body = error.openai_body();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(&body).await?;
        tcp.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Accepts a JSON body's Content-Type (or none, or what `curl -d` sends).
pub(crate) fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(header::CONTENT_TYPE) {
        // curl and many clients omit it; the body still has to be JSON.
        None => Ok(()),
        // `curl -d '{…}'` labels its JSON a form; the body still has to be
        // JSON (a real form is a 400). Browsers cannot send it cross-site with
        // a key: the Authorization header needs a CORS preflight.
        Some(v)
            if v.as_bytes()
                .get(..33)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"application/x-www-form-urlencoded")) =>
        {
            Ok(())
        }
        Some(v) => {
            let mime = v
                .to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim();
            if mime.eq_ignore_ascii_case("application/json") {
                Ok(())
            } else {
                Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!("Unsupported content type '{mime}'; send 'application/json'."),
                ))
            }
        }
    }
}

/// Bytes of an oversized body read and discarded before answering 413, so the
/// client (still uploading) reads the answer instead of a connection reset.
/// Larger bodies are cut off: the connection closes after the 413.
const DRAIN_CAP: usize = 16 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Refuses a compressed body (415): decoding one would let a few kilobytes on
/// the wire become gigabytes in memory, and no client of these APIs needs it.
pub(crate) fn check_encoding(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(header::CONTENT_ENCODING) {
        None => Ok(()),
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"identity") => Ok(()),
        Some(v) => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "Content-Encoding '{}' is not supported; send the body uncompressed.",
                sy_protocol::bounded(&String::from_utf8_lossy(v.as_bytes()), 32)
            ),
        )),
    }
}

/// Reads a whole body up to `server.max_body_bytes` (413 beyond, on the
/// declared length first), refusing compressed bodies; a body the intake
/// guard cut off (too slow, no room) gets its 408 or 503.
pub(crate) async fn read_body(
    limit: usize,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    check_encoding(headers)?;
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("The request body is larger than the {limit} bytes this server accepts."),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = body;
    let mut buf =
        bytes::BytesMut::with_capacity(declared.map_or(8192, |n| n.min(limit as u64) as usize));
    let mut over = declared.is_some_and(|n| n > limit as u64);
    let mut seen = 0usize;
    let drain_until = tokio::time::Instant::now() + DRAIN_TIME;
    loop {
        let frame = if over {
            match tokio::time::timeout_at(drain_until, body.frame()).await {
                Ok(f) => f,
                Err(_) => break,
            }
        } else {
            body.frame().await
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| match BodyRefused::find(&e) {
            Some(refused) => refused.api_error(),
            None => ApiError::new(
                ErrorCode::InvalidRequest,
                "The request body could not be read.",
            ),
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if over {
            if seen > DRAIN_CAP {
                break;
            }
        } else if seen > limit {
            over = true;
            buf = bytes::BytesMut::new();
        } else {
            buf.extend_from_slice(&data);
        }
    }
    if over {
        Err(too_large())
    } else {
        Ok(buf.freeze())
    }
}
