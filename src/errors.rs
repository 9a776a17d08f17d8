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
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: None,
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

/// Wraps an upstream error body in the envelope unless it already is one.
pub fn wrap_upstream_error(status: u16, provider: &str, body: &[u8]) -> Bytes {
    if ErrorEnvelope::is_envelope(body) {
        return Bytes::copy_from_slice(body);
    }
    // Keep what the provider said, as text, so nothing useful is lost.
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let detail = if text.is_empty() {
        String::new()
    } else {
        let mut t: String = text.chars().take(2000).collect();
        if t.len() < text.len() {
            t.push_str("...");
        }
        format!(": {t}")
    };
    ErrorEnvelope::new(
        format!("provider {provider} returned HTTP {status}{detail}"),
        error_type_for_status(status),
        None,
        Some("upstream_error"),
    )
    .to_bytes()
    .into()
}
