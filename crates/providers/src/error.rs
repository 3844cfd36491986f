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
            ProviderError::Transport(e) if e.is_timeout() => ErrorCode::ProviderTimeout,
            _ => ErrorCode::ProviderError,
        }
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
            ProviderError::Upstream { status, message } => {
                e.message = format!("{provider} returned HTTP {status}: {message}");
                e.provider_status = Some(*status);
            }
            _ => {}
        }
        e
    }
}
