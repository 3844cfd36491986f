use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sy_protocol::{ApiSurface, ErrorCode, FrameError};

/// An error for the client, rendered in its API's format by [`ApiError::into_response`].
#[derive(Debug, Clone)]
pub struct ApiError {
    /// What kind.
    pub code: ErrorCode,
    /// HTTP status.
    pub status: StatusCode,
    /// What to tell the client.
    pub message: String,
    /// The offending request parameter, if one.
    pub param: Option<String>,
    /// Seconds to wait before retrying (429/503).
    pub retry_after_secs: Option<u64>,
    /// More response headers (e.g. the rate-limit headers of a 429).
    pub headers: Vec<(axum::http::HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with the code's own status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            status: StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: message.into(),
            param: None,
            retry_after_secs: None,
            headers: Vec::new(),
        }
    }

    /// A 400 about one parameter.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.into()),
            ..ApiError::new(ErrorCode::InvalidRequest, message)
        }
    }

    /// An error a worker reported.
    pub fn from_frame(e: &FrameError) -> Self {
        ApiError {
            status: StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY),
            retry_after_secs: e.retry_after_ms.map(|ms| ms.div_ceil(1000)),
            ..ApiError::new(e.code, e.message.clone())
        }
    }

    /// The OpenAI `type` field for this error.
    fn openai_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            402 => "insufficient_quota",
            403 => "permission_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            503 if self.code == ErrorCode::Overloaded => "server_error",
            503 => "service_unavailable",
            _ => "server_error",
        }
    }

    /// The OpenAI error body `{"error":{"message","type","param","code"}}`.
    pub fn openai_body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: &'a str,
        }
        serde_json::to_vec(&Body {
            error: Inner {
                message: &self.message,
                kind: self.openai_type(),
                param: self.param.as_deref(),
                code: self.code.as_str(),
            },
        })
        .unwrap_or_default()
    }
}

impl ApiError {
    /// Anthropic's status for this error: overloads are 529 there.
    fn anthropic_status(&self) -> StatusCode {
        match self.code {
            ErrorCode::Overloaded => StatusCode::from_u16(529).unwrap_or(self.status),
            _ => self.status,
        }
    }

    /// The Anthropic error object `{"type":"error","error":{"type","message"}}`.
    pub fn anthropic_value(&self) -> serde_json::Value {
        let kind = match self.anthropic_status().as_u16() {
            401 => "authentication_error",
            402 => "billing_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            408 | 504 => "timeout_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        };
        serde_json::json!({"type": "error", "error": {"type": kind, "message": self.message}})
    }

    /// The error as a response in the format of the client's API.
    pub fn render(self, surface: ApiSurface) -> Response {
        match surface {
            ApiSurface::Messages => {
                let status = self.anthropic_status();
                let body = serde_json::to_vec(&self.anthropic_value()).unwrap_or_default();
                self.respond(status, body)
            }
            ApiSurface::Rerank => {
                // Cohere's `message` on top, and the `error` object of every
                // other surface beside it.
                let error: serde_json::Value =
                    serde_json::from_slice(&self.openai_body()).unwrap_or_default();
                let body = serde_json::to_vec(&serde_json::json!({
                    "message": self.message,
                    "error": error["error"],
                }))
                .unwrap_or_default();
                let status = self.status;
                self.respond(status, body)
            }
            _ => {
                let (status, body) = (self.status, self.openai_body());
                self.respond(status, body)
            }
        }
    }

    fn respond(self, status: StatusCode, body: Vec<u8>) -> Response {
        let mut resp = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        resp.extensions_mut().insert(self.code);
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.render(ApiSurface::ChatCompletions)
    }
}
