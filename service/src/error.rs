//! Errors answered to HTTP clients: status, a stable snake_case tag (also the metric label), a message
//! that names the problem, and `Retry-After` where retrying helps. 5xx bodies never carry internals.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub tag: &'static str,
    pub message: String,
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, tag: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, tag, message: message.into(), retry_after: None }
    }
    pub fn bad_request(tag: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, tag, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn rate_limited(tag: &'static str, retry_after: u32) -> Self {
        ApiError {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, tag, "rate limit exceeded, retry later")
        }
    }
    /// 503: the request was not accepted and may be retried as is.
    pub fn unavailable(tag: &'static str, message: impl Into<String>, retry_after: u32) -> Self {
        ApiError { retry_after: Some(retry_after.max(1)), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, tag, message) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), tag = self.tag, message = %self.message, "request failed");
        } else {
            tracing::warn!(status = self.status.as_u16(), tag = self.tag, message = %self.message, "request refused");
        }
        let mut resp = (self.status, Json(json!({"error": self.tag, "message": self.message}))).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Defines `Context`, the `.context(…)` / `.with_context(…)` extension of a crate's error type on
/// results and options (what `anyhow` gives binaries): the crate's `Error` must have the variants
/// `Context { context: String, inner: Box<Error> }` and `Other(String)`.
#[macro_export]
macro_rules! define_context {
    ($error:ident) => {
        /// `.context(…)` on results and options.
        pub trait Context<T> {
            fn context(self, context: impl Into<String>) -> Result<T, $error>;
            fn with_context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, $error>;
        }

        impl<T, E: Into<$error>> Context<T> for std::result::Result<T, E> {
            fn context(self, context: impl Into<String>) -> Result<T, $error> {
                self.map_err(|e| $error::Context { context: context.into(), inner: Box::new(e.into()) })
            }
            fn with_context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, $error> {
                self.map_err(|e| $error::Context { context: context().into(), inner: Box::new(e.into()) })
            }
        }

        impl<T> Context<T> for Option<T> {
            fn context(self, context: impl Into<String>) -> Result<T, $error> {
                self.ok_or_else(|| $error::Other(context.into()))
            }
            fn with_context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, $error> {
                self.ok_or_else(|| $error::Other(context().into()))
            }
        }
    };
}
