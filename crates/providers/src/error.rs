use std::time::Duration;

use sy_protocol::{ErrorCode, FrameError};

/// Why a provider call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider said 429.
    #[error("provider rate limited the call")]
    RateLimited {
        /// From `Retry-After`.
        retry_after: Option<Duration>,
        /// The provider's message.
        message: String,
    },
    /// The provider is overloaded (Anthropic's 529, a 503 that says so).
    #[error("provider is overloaded: {message}")]
    Overloaded {
        /// From `Retry-After`.
        retry_after: Option<Duration>,
        /// The provider's message.
        message: String,
    },
    /// The prompt does not fit the model's context window.
    #[error("prompt too long for the model: {0}")]
    ContextLength(String),
    /// The provider refused on content-policy grounds.
    #[error("provider refused on content policy: {0}")]
    ContentFilter(String),
    /// Switchyard cannot express the request in this provider's dialect (a 400 for
    /// the client; the provider was not called).
    #[error("{0}")]
    Unsupported(String),
    /// The provider answered with an error status.
    #[error("provider returned {status}: {message}")]
    Upstream {
        /// The HTTP status.
        status: u16,
        /// The provider's message (credentials never included).
        message: String,
    },
    /// The stream ended before a finish reason.
    #[error("provider stream ended before a finish reason")]
    StreamCut,
    /// The provider sent something that is not its dialect.
    #[error("provider sent an unreadable response: {0}")]
    Protocol(String),
    /// A watchdog gave up on the call: no first token, a stalled stream, or no
    /// answer in time.
    #[error("provider timed out: {0}")]
    Timeout(String),
    /// No connection could be made.
    #[error("cannot connect to provider")]
    Connect(#[source] reqwest::Error),
    /// The request failed on the way.
    #[error("request to provider failed")]
    Transport(#[source] reqwest::Error),
}

impl ProviderError {
    /// The error code that crosses the bus.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProviderError::RateLimited { .. } => ErrorCode::RateLimited,
            ProviderError::Overloaded { .. } => ErrorCode::Overloaded,
            ProviderError::ContextLength(_) => ErrorCode::ContextLengthExceeded,
            ProviderError::ContentFilter(_) => ErrorCode::ContentFiltered,
            ProviderError::Unsupported(_) => ErrorCode::InvalidRequest,
            ProviderError::Timeout(_) => ErrorCode::ProviderTimeout,
            ProviderError::Transport(e) if e.is_timeout() => ErrorCode::ProviderTimeout,
            _ => ErrorCode::ProviderError,
        }
    }

    /// True when the provider never saw the request (nothing to bill).
    pub fn before_call(&self) -> bool {
        matches!(self, ProviderError::Unsupported(_))
    }

    /// The error as the ingress will render it.
    pub fn to_frame_error(&self, provider: &str) -> FrameError {
        let mut e = FrameError::new(self.code(), format!("{provider}: {self}"));
        match self {
            ProviderError::RateLimited {
                retry_after,
                message,
            } => {
                e.message = format!("{provider} rate limited the request: {message}");
                e.provider_status = Some(429);
                e.retry_after_ms = retry_after.map(|d| d.as_millis() as u64);
            }
            ProviderError::Overloaded {
                retry_after,
                message,
            } => {
                e.message = format!("{provider} is overloaded: {message}");
                e.provider_status = Some(503);
                e.retry_after_ms = retry_after.map(|d| d.as_millis() as u64);
            }
            ProviderError::ContextLength(message) | ProviderError::ContentFilter(message) => {
                e.message = format!("{provider}: {message}");
                e.provider_status = Some(400);
            }
            ProviderError::Unsupported(message) => {
                e.message = message.clone();
            }
            ProviderError::Upstream { status, message } => {
                e.message = format!("{provider} returned HTTP {status}: {message}");
                e.provider_status = Some(*status);
            }
            _ => {}
        }
        e
    }
}

/// What a dialect's error body says, for [`classify`].
#[derive(Debug, Default)]
pub struct ErrorBody {
    /// The human message.
    pub message: Option<String>,
    /// The machine kind (`type`, `code` or `status` field), lowercased.
    pub kind: Option<String>,
}

/// Turns an error status and the dialect's reading of the body into a
/// [`ProviderError`], keeping the provider's message but never echoing credentials.
/// Shared by every adapter so that a rate limit, an overload, a context overflow or
/// a content refusal means the same thing whoever said it.
pub fn classify(
    status: u16,
    body: ErrorBody,
    raw: &[u8],
    retry_after: Option<Duration>,
) -> ProviderError {
    let message = match status {
        401 | 403 => "the provider rejected Switchyard's credentials for it".to_owned(),
        _ => body.message.unwrap_or_else(|| {
            let text = String::from_utf8_lossy(raw);
            let text = text.trim();
            if text.is_empty() {
                "no error message".to_owned()
            } else {
                text.chars().take(300).collect()
            }
        }),
    };
    let kind = body.kind.unwrap_or_default().to_ascii_lowercase();
    let lower = message.to_ascii_lowercase();
    let says = |words: &[&str]| words.iter().any(|w| kind.contains(w) || lower.contains(w));
    match status {
        429 => ProviderError::RateLimited {
            retry_after,
            message,
        },
        529 => ProviderError::Overloaded {
            retry_after,
            message,
        },
        503 if says(&["overload", "unavailable"]) => ProviderError::Overloaded {
            retry_after,
            message,
        },
        400 | 413 | 422
            if says(&[
                "context_length",
                "context length",
                "context window",
                "prompt is too long",
                "maximum context",
                "too many tokens",
                "input token count",
                "exceeds the maximum number of tokens",
            ]) =>
        {
            ProviderError::ContextLength(message)
        }
        400 | 403
            if says(&[
                "content_filter",
                "content_policy",
                "content policy",
                "safety",
                "responsible ai",
            ]) =>
        {
            ProviderError::ContentFilter(message)
        }
        _ => ProviderError::Upstream { status, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(kind: &str, message: &str) -> ErrorBody {
        ErrorBody {
            kind: Some(kind.into()),
            message: Some(message.into()),
        }
    }

    #[test]
    fn kinds_are_recognised_whoever_says_them() {
        let c = |status, b| classify(status, b, b"", None).code();
        assert_eq!(
            c(429, body("rate_limit_error", "slow")),
            ErrorCode::RateLimited
        );
        assert_eq!(
            c(529, body("overloaded_error", "busy")),
            ErrorCode::Overloaded
        );
        assert_eq!(
            c(503, body("UNAVAILABLE", "The model is overloaded.")),
            ErrorCode::Overloaded
        );
        assert_eq!(
            c(
                400,
                body(
                    "invalid_request_error",
                    "prompt is too long: 210000 tokens > 200000 maximum"
                )
            ),
            ErrorCode::ContextLengthExceeded
        );
        assert_eq!(
            c(
                400,
                body(
                    "context_length_exceeded",
                    "This model's maximum context length is 128000 tokens."
                )
            ),
            ErrorCode::ContextLengthExceeded
        );
        assert_eq!(
            c(400, body("content_filter", "The response was filtered")),
            ErrorCode::ContentFiltered
        );
        assert_eq!(
            c(400, body("invalid_request_error", "bad temperature")),
            ErrorCode::ProviderError
        );
        assert_eq!(c(500, body("api_error", "oops")), ErrorCode::ProviderError);
    }

    #[test]
    fn credentials_are_never_echoed() {
        let e = classify(
            401,
            body("authentication_error", "invalid x-api-key sk-ant-123"),
            b"",
            None,
        );
        assert!(!e.to_string().contains("sk-ant"));
    }
}
