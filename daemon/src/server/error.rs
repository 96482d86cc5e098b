//! The one place where failures become HTTP: OpenAI's error envelope
//! `{"error":{"message","type","param","code"}}` with the matching status code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::engine::EngineError;
use crate::sched::{AbortReason, AddError};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after_s: None,
        }
    }

    /// A bad value of request field `param`.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_owned()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn context_length(message: impl Into<String>) -> Self {
        Self {
            code: Some("context_length_exceeded"),
            param: Some("messages".into()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    pub fn model_not_found(model: &str) -> Self {
        Self {
            code: Some("model_not_found"),
            param: Some("model".into()),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{model}` does not exist."),
            )
        }
    }

    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "Invalid or missing API key.",
            )
        }
    }

    pub fn overloaded(retry_after_s: u64) -> Self {
        Self {
            retry_after_s: Some(retry_after_s),
            code: Some("server_overloaded"),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "The server is at capacity; retry later.",
            )
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            retry_after_s: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The OpenAI error envelope.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Every engine refusal and failure, as the client sees it: capacity and health problems are a
/// 503 with `Retry-After` (another replica may serve it), requests that can never fit are a 400,
/// everything else a 500 whose message says what failed.
impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match &error {
            EngineError::Overloaded { .. } | EngineError::Refused(AddError::QueueFull { .. }) => {
                Self::overloaded(1)
            }
            EngineError::Draining | EngineError::Stopped | EngineError::Unhealthy => {
                Self::unavailable(error.to_string())
            }
            EngineError::Aborted(
                AbortReason::ExceedsKvCapacity { .. } | AbortReason::ExceedsTokenBudget { .. },
            ) => Self {
                code: Some("context_length_exceeded"),
                ..Self::bad_request(error.to_string())
            },
            EngineError::Refused(_)
            | EngineError::Aborted(AbortReason::Kv(_))
            | EngineError::Kv(_)
            | EngineError::Forward(_)
            | EngineError::Detokenize(_)
            | EngineError::Guide(_)
            | EngineError::Panicked
            | EngineError::Internal(_) => Self::internal(error.to_string()),
        }
    }
}

/// Malformed JSON and wrong field types become a 400 in the envelope, not axum's plain text.
/// A body over the size limit is a 413 before anything is parsed.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> Self {
        Self {
            status: rejection.status(),
            ..Self::bad_request(rejection.body_text())
        }
    }
}
