//! Errors the gateway itself answers with, in OpenAI's envelope so the official SDKs raise the
//! matching typed exception (BadRequestError, PermissionDeniedError, RateLimitError, ...).

use bytes::Bytes;
use filters::openai::{error_type_for_status, ErrorEnvelope};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
    /// Sent as `Retry-After` (seconds, rounded up).
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn param(mut self, p: &'static str) -> Self {
        self.param = Some(p);
        self
    }

    pub fn code(mut self, c: &'static str) -> Self {
        self.code = Some(c);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    pub fn body(&self) -> Bytes {
        ErrorEnvelope::new(
            self.message.as_str(),
            error_type_for_status(self.status),
            self.param,
            self.code,
        )
        .to_bytes()
        .into()
    }
}
