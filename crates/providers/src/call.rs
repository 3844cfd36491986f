//! What every adapter shares: the pooled HTTP client, posting a JSON body and
//! classifying an error answer, and turning an SSE body into a [`ChunkStream`]
//! through the dialect's [`Decoder`].

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use sy_config::ProviderConfig;

use crate::error::{ErrorBody, classify};
use crate::sse::{SseEvent, SseParser};
use crate::{Chunk, ChunkStream, ProviderError};

/// reqwest is built without a default TLS backend; ring (already used by
/// async-nats) is the one we ship. Installing twice is a no-op.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One pooled client per provider entry: TCP_NODELAY, the entry's connect timeout.
pub(crate) fn client(config: &ProviderConfig) -> Result<reqwest::Client, ProviderError> {
    install_crypto_provider();
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(config.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(ProviderError::Transport)
}

/// The entry's extra headers plus the dialect's credential header (marked sensitive).
pub(crate) fn headers(
    config: &ProviderConfig,
    credential: Option<(HeaderName, String)>,
) -> Result<HeaderMap, ProviderError> {
    let mut headers = HeaderMap::new();
    if let Some((name, value)) = credential {
        let mut v = HeaderValue::from_str(&value)
            .map_err(|_| ProviderError::Protocol("api_key is not a valid header value".into()))?;
        v.set_sensitive(true);
        headers.insert(name, v);
    }
    for (k, v) in &config.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| ProviderError::Protocol(format!("bad header name {k}")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| ProviderError::Protocol(format!("bad value for header {k}")))?;
        headers.insert(name, value);
    }
    Ok(headers)
}

/// How a dialect sends its credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth {
    /// `Authorization: Bearer KEY`.
    Bearer,
    /// `<header>: KEY`.
    Header(&'static str),
}

impl Auth {
    /// The header carrying `key`.
    pub(crate) fn header(self, key: &str) -> (HeaderName, String) {
        match self {
            Auth::Bearer => (http::header::AUTHORIZATION, format!("Bearer {key}")),
            Auth::Header(name) => (HeaderName::from_static(name), key.to_owned()),
        }
    }
}

/// The entry's credential header, if it has a key.
pub(crate) fn entry_credential(
    config: &ProviderConfig,
    auth: Auth,
) -> Option<(HeaderName, String)> {
    config.api_key.as_ref().map(|k| auth.header(k.expose()))
}

/// The headers of one call: the entry's, with the call's own credential in
/// place of the entry's when it has one (marked sensitive).
pub(crate) fn call_headers<'a>(
    base: &'a HeaderMap,
    auth: Auth,
    cx: &crate::CallContext,
) -> Result<std::borrow::Cow<'a, HeaderMap>, ProviderError> {
    let Some(key) = &cx.credential else {
        return Ok(std::borrow::Cow::Borrowed(base));
    };
    let (name, value) = auth.header(&key.0);
    let mut v = HeaderValue::from_str(&value).map_err(|_| {
        ProviderError::Protocol("the credential is not a valid header value".into())
    })?;
    v.set_sensitive(true);
    let mut headers = base.clone();
    headers.insert(name, v);
    Ok(std::borrow::Cow::Owned(headers))
}

/// A header value from config text.
pub(crate) fn header_value(v: &str) -> Result<HeaderValue, ProviderError> {
    HeaderValue::from_str(v).map_err(|_| ProviderError::Protocol(format!("bad header value {v:?}")))
}

/// Posts `body` as JSON; an error status comes back classified, reading the body
/// with the dialect's `read_error`.
pub(crate) async fn post_json(
    client: &reqwest::Client,
    url: &str,
    headers: &HeaderMap,
    body: Vec<u8>,
    read_error: fn(&[u8]) -> ErrorBody,
) -> Result<reqwest::Response, ProviderError> {
    let resp = client
        .post(url)
        .headers(headers.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(transport)?;
    success(resp, read_error).await
}

/// `resp` when its status is a success; else its error, classified.
async fn success(
    resp: reqwest::Response,
    read_error: fn(&[u8]) -> ErrorBody,
) -> Result<reqwest::Response, ProviderError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = retry_after(resp.headers());
    let raw = resp.bytes().await.unwrap_or_default();
    Err(classify(
        status.as_u16(),
        read_error(&raw),
        &raw,
        retry_after,
    ))
}

/// Posts a multipart form (an upload); an error status comes back
/// classified, as [`post_json`]'s.
pub(crate) async fn post_form(
    client: &reqwest::Client,
    url: &str,
    headers: &HeaderMap,
    form: reqwest::multipart::Form,
    read_error: fn(&[u8]) -> ErrorBody,
) -> Result<reqwest::Response, ProviderError> {
    let resp = client
        .post(url)
        .headers(headers.clone())
        .multipart(form)
        .send()
        .await
        .map_err(transport)?;
    success(resp, read_error).await
}

/// The whole body of a non-streamed answer.
pub(crate) async fn body(resp: reqwest::Response) -> Result<Bytes, ProviderError> {
    resp.bytes().await.map_err(transport)
}

pub(crate) fn transport(e: reqwest::Error) -> ProviderError {
    if e.is_connect() {
        ProviderError::Connect(e)
    } else {
        ProviderError::Transport(e)
    }
}

pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?;
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// A JSON error body's message and kind, from the first of `paths` that holds a
/// string (each path is a list of object keys).
pub(crate) fn read_error_fields(raw: &[u8], message: &[&[&str]], kind: &[&[&str]]) -> ErrorBody {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(raw) else {
        return ErrorBody::default();
    };
    let find = |paths: &[&[&str]]| {
        paths.iter().find_map(|path| {
            let mut at = &v;
            for key in *path {
                at = at.get(key)?;
            }
            match at {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        })
    };
    ErrorBody {
        message: find(message),
        kind: find(kind),
    }
}

/// What one SSE event of a stream means.
#[derive(Debug)]
pub enum Step {
    /// A piece of the answer.
    Chunk(Chunk),
    /// Nothing for the client (a ping, a block boundary).
    Skip,
    /// The provider says the stream is over.
    Done,
}

/// A dialect's reading of its SSE events, one at a time, in order.
pub trait Decoder: Send + 'static {
    /// Reads one event.
    fn event(&mut self, event: SseEvent) -> Result<Step, ProviderError>;
    /// True once the answer is complete (a finish reason was seen): a stream that
    /// ends before this was cut.
    fn complete(&self) -> bool;
}

struct StreamState<D> {
    body: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    parser: SseParser,
    decoder: D,
    done: bool,
}

/// The answer of a streamed call as chunks, decoded by `decoder`. Ends after the
/// provider's end (or an error: a cut before completion is [`ProviderError::StreamCut`]).
pub(crate) fn sse_stream<D: Decoder>(resp: reqwest::Response, decoder: D) -> ChunkStream {
    let state = StreamState {
        body: resp.bytes_stream().boxed(),
        parser: SseParser::new(),
        decoder,
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let event = match st.parser.next_event() {
                Some(ev) => Some(ev),
                None => match st.body.next().await {
                    Some(Ok(bytes)) => {
                        st.parser.push(&bytes);
                        continue;
                    }
                    Some(Err(e)) => {
                        st.done = true;
                        tracing::debug!(error = %e, "Provider stream broke.");
                        return Some((Err(ProviderError::StreamCut), st));
                    }
                    None => st.parser.finish(),
                },
            };
            let step = match event {
                Some(ev) => st.decoder.event(ev),
                // The body ended.
                None => Ok(Step::Done),
            };
            match step {
                Ok(Step::Skip) => {}
                Ok(Step::Chunk(chunk)) => return Some((Ok(chunk), st)),
                Ok(Step::Done) => {
                    st.done = true;
                    if st.decoder.complete() {
                        return None;
                    }
                    return Some((Err(ProviderError::StreamCut), st));
                }
                Err(e) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
            }
        }
    })
    .boxed()
}

/// Feeds `bytes` to `decoder` in two reads split at `cut`, as a network might
/// deliver them: the chunks, whether a `Done` event came, and whether the
/// decoder saw the answer complete. For the dialects' split-point tests.
#[cfg(test)]
pub(crate) fn decode_split<D: Decoder>(
    mut decoder: D,
    bytes: &[u8],
    cut: usize,
) -> (Vec<Chunk>, bool, bool) {
    let mut parser = SseParser::new();
    let (mut out, mut done) = (Vec::new(), false);
    for part in [&bytes[..cut], &bytes[cut..]] {
        parser.push(part);
        while let Some(ev) = parser.next_event() {
            match decoder.event(ev) {
                Ok(Step::Chunk(c)) => out.push(c),
                Ok(Step::Skip) => {}
                Ok(Step::Done) => done = true,
                Err(e) => panic!("decoding failed at split {cut}: {e}"),
            }
        }
    }
    (out, done, decoder.complete())
}

/// Parses JSON from a provider, as a protocol error when it is not what we expect.
pub(crate) fn json<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, ProviderError> {
    serde_json::from_slice(raw).map_err(|e| ProviderError::Protocol(e.to_string()))
}
