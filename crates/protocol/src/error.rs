use serde::{Deserialize, Serialize};

/// The closed list of error kinds that cross the bus (in [`crate::FinalFrame`]) and
/// reach clients. Each maps to one HTTP status; the ingress renders it in the
/// client's own API format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or violates the API's rules (400).
    InvalidRequest,
    /// No key, or a key Switchyard does not know (401).
    Unauthenticated,
    /// The key is valid but may not do this: a model outside its scope, a
    /// client address outside its allowed networks (403).
    PermissionDenied,
    /// No route serves the requested model (404).
    ModelNotFound,
    /// No such endpoint (404).
    NotFound,
    /// The endpoint exists but not for this method (405).
    MethodNotAllowed,
    /// The body is larger than `server.max_body_bytes` (413).
    PayloadTooLarge,
    /// The request was not received in time: its body arrived slower than
    /// `server.min_body_rate` allows (408).
    RequestTimeout,
    /// The body is not `application/json` (415).
    UnsupportedMediaType,
    /// A rate limit said no; `Retry-After` says when to come back (429).
    RateLimited,
    /// A budget cannot pay for the request (402).
    BudgetExceeded,
    /// The provider failed; its status when it means something to the client, else 502.
    ProviderError,
    /// The provider is overloaded (Anthropic's 529, a 503); retry later (503).
    Overloaded,
    /// The prompt does not fit the model's context window (400).
    ContextLengthExceeded,
    /// The provider refused the request or its answer on content-policy grounds (400).
    #[serde(rename = "content_filter")]
    ContentFiltered,
    /// The provider did not answer in time (504).
    ProviderTimeout,
    /// The request's deadline passed before it finished (504).
    DeadlineExceeded,
    /// NATS is unreachable or did not confirm the publish (503).
    BusUnavailable,
    /// A bug or an impossible state (500).
    Internal,
}

impl ErrorCode {
    /// The HTTP status this code answers with by default.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest
            | ErrorCode::ContextLengthExceeded
            | ErrorCode::ContentFiltered => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::ModelNotFound | ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::RateLimited => 429,
            ErrorCode::BudgetExceeded => 402,
            ErrorCode::ProviderError => 502,
            ErrorCode::ProviderTimeout | ErrorCode::DeadlineExceeded => 504,
            ErrorCode::BusUnavailable | ErrorCode::Overloaded => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// Whose failure it is, in the closed vocabulary of the metrics'
    /// `error_type` label: `caller` (the request), `policy` (a limit, a
    /// budget, a scope), `provider`, or `internal` (Switchyard's own).
    pub fn error_type(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest
            | ErrorCode::Unauthenticated
            | ErrorCode::ModelNotFound
            | ErrorCode::NotFound
            | ErrorCode::MethodNotAllowed
            | ErrorCode::PayloadTooLarge
            | ErrorCode::RequestTimeout
            | ErrorCode::UnsupportedMediaType
            | ErrorCode::ContextLengthExceeded => "caller",
            ErrorCode::PermissionDenied | ErrorCode::RateLimited | ErrorCode::BudgetExceeded => {
                "policy"
            }
            ErrorCode::ProviderError
            | ErrorCode::Overloaded
            | ErrorCode::ContentFiltered
            | ErrorCode::ProviderTimeout
            | ErrorCode::DeadlineExceeded => "provider",
            ErrorCode::BusUnavailable | ErrorCode::Internal => "internal",
        }
    }

    /// The snake_case name, as on the wire and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BudgetExceeded => "budget_exceeded",
            ErrorCode::ProviderError => "provider_error",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::ContextLengthExceeded => "context_length_exceeded",
            ErrorCode::ContentFiltered => "content_filter",
            ErrorCode::ProviderTimeout => "provider_timeout",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::BusUnavailable => "bus_unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_name_matches_as_str() {
        for code in [
            ErrorCode::InvalidRequest,
            ErrorCode::PermissionDenied,
            ErrorCode::ModelNotFound,
            ErrorCode::RateLimited,
            ErrorCode::BudgetExceeded,
            ErrorCode::DeadlineExceeded,
            ErrorCode::BusUnavailable,
        ] {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::Value::String(code.as_str().to_owned()));
        }
    }
}
