//! The failure table: what a failed call leads to (docs/reliability.md).

use std::time::Duration;

use sy_protocol::{ErrorCode, FrameError};

/// What to do after a call failed before any output reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Call the same target again after a backoff (at least this long).
    Retry(Option<Duration>),
    /// Do not call this target again for this request: the next target.
    Fallback,
    /// The client gets this error.
    Final,
}

/// The failure table (docs/reliability.md): 429, overload, 5xx and connections
/// that failed before an answer are retried and then fall back; a target that
/// stayed silent past its timeout, or whose context window is too small, is
/// not called again; refusals and other 4xx are final.
pub(crate) fn next_step(e: &FrameError, fallback_on_refusal: bool) -> Next {
    match e.code {
        ErrorCode::ContentFiltered if fallback_on_refusal => Next::Fallback,
        ErrorCode::RateLimited | ErrorCode::Overloaded => {
            Next::Retry(e.retry_after_ms.map(Duration::from_millis))
        }
        ErrorCode::ProviderError => match e.provider_status {
            None | Some(408 | 500..) => Next::Retry(None),
            Some(_) => Next::Final,
        },
        ErrorCode::ProviderTimeout | ErrorCode::ContextLengthExceeded => Next::Fallback,
        _ => Next::Final,
    }
}

/// Shortest and longest backoff between retries on one target (with jitter).
pub(crate) const RETRY_MIN: Duration = Duration::from_millis(100);
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: ErrorCode, status: Option<u16>, retry_after_ms: Option<u64>) -> FrameError {
        let mut e = FrameError::new(code, "x");
        e.provider_status = status;
        e.retry_after_ms = retry_after_ms;
        e
    }

    #[test]
    fn a_route_may_let_refusals_fall_back() {
        let e = err(ErrorCode::ContentFiltered, Some(400), None);
        assert_eq!(next_step(&e, true), Next::Fallback);
        assert_eq!(next_step(&e, false), Next::Final);
    }

    /// docs/reliability.md's failure table, row by row.
    #[test]
    fn the_failure_table() {
        let rows: [(FrameError, Next); 12] = [
            (
                err(ErrorCode::RateLimited, Some(429), Some(1500)),
                Next::Retry(Some(Duration::from_millis(1500))),
            ),
            (
                err(ErrorCode::RateLimited, Some(429), None),
                Next::Retry(None),
            ),
            (
                err(ErrorCode::Overloaded, Some(529), None),
                Next::Retry(None),
            ),
            (
                err(ErrorCode::ProviderError, Some(500), None),
                Next::Retry(None),
            ),
            (
                err(ErrorCode::ProviderError, Some(502), None),
                Next::Retry(None),
            ),
            (
                err(ErrorCode::ProviderError, Some(408), None),
                Next::Retry(None),
            ),
            // Connection refused or reset, an unreadable answer: no status.
            (err(ErrorCode::ProviderError, None, None), Next::Retry(None)),
            (err(ErrorCode::ProviderTimeout, None, None), Next::Fallback),
            (
                err(ErrorCode::ContextLengthExceeded, Some(400), None),
                Next::Fallback,
            ),
            (
                err(ErrorCode::ContentFiltered, Some(400), None),
                Next::Final,
            ),
            (err(ErrorCode::ProviderError, Some(401), None), Next::Final),
            (err(ErrorCode::InvalidRequest, None, None), Next::Final),
        ];
        for (e, want) in rows {
            assert_eq!(
                next_step(&e, false),
                want,
                "{:?} {:?}",
                e.code,
                e.provider_status
            );
        }
    }
}
