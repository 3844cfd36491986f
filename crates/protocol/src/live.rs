//! What workers tell every ingress about the targets they call.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// How an attempt reflects on its target's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The target answered.
    Ok,
    /// The target failed: a 5xx, overload, rate limit, timeout or a connection
    /// that could not be made or broke.
    Failed,
    /// The attempt says nothing about the target: the request was refused for
    /// its own content (bad request, context length, content filter) or the
    /// client went away.
    Neutral,
}

impl Outcome {
    /// The health meaning of an attempt that ended with `code` (none: success)
    /// and, when the provider answered with an error, its HTTP status. A
    /// provider's 400/413/422 blames the request; its 401/403/404 (a bad key or
    /// model in the config) and every 5xx blame the target.
    pub fn of(code: Option<ErrorCode>, provider_status: Option<u16>) -> Outcome {
        match code {
            None => Outcome::Ok,
            Some(ErrorCode::ProviderError)
                if matches!(provider_status, Some(400 | 409 | 413 | 415 | 422)) =>
            {
                Outcome::Neutral
            }
            Some(
                ErrorCode::ProviderError
                | ErrorCode::Overloaded
                | ErrorCode::RateLimited
                | ErrorCode::ProviderTimeout,
            ) => Outcome::Failed,
            Some(_) => Outcome::Neutral,
        }
    }
}

/// One attempt's result, or a summary of one worker's successful calls to one
/// target, broadcast by the worker on `<ns>.live.<provider>` (core NATS, at
/// most once). A failure goes out as soon as its call ends; successes to a
/// target whose recent calls all succeeded are summed and go out together
/// (`calls` of them) within a tenth of a second, others one by one. Each
/// ingress folds these into its live view of the targets: health, time to
/// first token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The provider entry.
    pub provider: String,
    /// The upstream model.
    pub model: String,
    /// The worker instance that made the call.
    pub worker_id: String,
    /// What the attempt says about the target.
    pub outcome: Outcome,
    /// The error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<ErrorCode>,
    /// From the worker taking the request to the first token, when one came
    /// (a summary: the mean over its calls of this, or of `duration_ms` for a
    /// call without a first token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<u64>,
    /// From the worker taking the request to the end of the call (a summary:
    /// the mean).
    pub duration_ms: u64,
    /// When the call ended (a summary: its latest call).
    pub at_unix_ms: u64,
    /// How many calls this says the same of: 1 for a single call (then left
    /// out), more for a summary of successes.
    #[serde(default = "one_call", skip_serializing_if = "is_one_call")]
    pub calls: u32,
}

fn one_call() -> u32 {
    1
}

fn is_one_call(n: &u32) -> bool {
    *n == 1
}

/// An operator's word on a target, kept in the KV bucket `<NS>_TARGETS` (one
/// key per target) and followed by every ingress and worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetOverride {
    /// The provider entry.
    pub provider: String,
    /// The upstream model.
    pub model: String,
    /// `off`: never routed to; `on`: routed to whatever its health; `auto`:
    /// as its health says.
    pub state: ForcedState,
    /// Who said so (the API key's name).
    pub by: String,
    /// When.
    pub at_unix_ms: u64,
}

/// See [`TargetOverride`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForcedState {
    /// Never routed to.
    Off,
    /// Routed to whatever its health.
    On,
    /// As its health says.
    Auto,
}

impl ForcedState {
    /// `Some(false)` off, `Some(true)` on, `None` auto.
    pub fn forced(self) -> Option<bool> {
        match self {
            ForcedState::Off => Some(false),
            ForcedState::On => Some(true),
            ForcedState::Auto => None,
        }
    }
}

impl TargetOverride {
    /// The KV key: the provider and the model, each hex-encoded (model names
    /// hold characters keys cannot).
    pub fn key(provider: &str, model: &str) -> String {
        let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        format!("{}.{}", hex(provider), hex(model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_targets_own_failures_count_against_it() {
        assert_eq!(Outcome::of(None, None), Outcome::Ok);
        assert_eq!(
            Outcome::of(Some(ErrorCode::ProviderError), Some(400)),
            Outcome::Neutral
        );
        assert_eq!(
            Outcome::of(Some(ErrorCode::ProviderError), Some(401)),
            Outcome::Failed
        );
        for c in [
            ErrorCode::ProviderError,
            ErrorCode::Overloaded,
            ErrorCode::RateLimited,
            ErrorCode::ProviderTimeout,
        ] {
            assert_eq!(Outcome::of(Some(c), None), Outcome::Failed, "{c:?}");
        }
        for c in [
            ErrorCode::InvalidRequest,
            ErrorCode::ContextLengthExceeded,
            ErrorCode::ContentFiltered,
            ErrorCode::DeadlineExceeded,
        ] {
            assert_eq!(Outcome::of(Some(c), None), Outcome::Neutral, "{c:?}");
        }
    }
}
