//! Errors the gateway itself answers with. Every one has a [`Code`], the one place that gives
//! it its status and its machine-readable code; doors render it in their envelope (OpenAI's
//! here, Anthropic's in `filters::doors::messages`), and `Retry-After` comes from the error.

use bytes::Bytes;
use filters::openai::{error_type_for_status, ErrorEnvelope};

/// What went wrong, as the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 400: the body is not JSON, or has duplicate top-level keys.
    InvalidJson,
    /// 400: more than `server.max_json_fields` top-level fields.
    TooManyFields,
    /// 400: a number the gateway reads (`max_tokens`, `n`, ...) is malformed.
    InvalidValue,
    /// 400: no `model`.
    MissingModel,
    /// 400: the model names no provider.
    ProviderNotDetermined,
    /// 400: `?provider=` names an unknown provider.
    UnknownProvider,
    /// 400: the provider has no key or was never configured.
    ProviderNotConfigured,
    /// 400: the request is malformed for its API.
    InvalidRequest,
    /// 400: the provider's API cannot express the request.
    UnsupportedRequest,
    /// 400: a Gemini model name with characters that would change its URL.
    InvalidModel,
    /// 400: `.`/`..` in a `/proxy` path.
    InvalidPath,
    /// 400: the request body could not be read.
    InvalidBody,
    /// 401
    MissingApiKey,
    InvalidApiKey,
    ExpiredApiKey,
    InvalidToken,
    /// 403: the caller may not use the model.
    ModelNotAllowed,
    /// 403: a budget cannot be charged for a model without a price.
    ModelNotPriced,
    /// 403: raw `/proxy` is refused to OIDC callers.
    ProxyNotAllowed,
    /// 403: `GET /v1/mcp/tools` without `MCP_EXPOSE`.
    McpNotExposed,
    /// 400: an input guardrail refused the request.
    ContentBlocked,
    /// 503: the guardrail webhook could not answer and its failure mode is `fail_closed`.
    GuardrailUnavailable,
    A2aNotExposed,
    /// 404: unknown path.
    NotFound,
    /// The admin API without (or with a wrong) admin key.
    InvalidAdminKey,
    /// The control plane's store is not configured or not reachable.
    StoreUnavailable,
    /// An object of the configuration file changed through the admin API.
    ReadOnly,
    /// A name already taken.
    AlreadyExists,
    /// An admin request's field is unknown or has the wrong type or value.
    InvalidField,
    /// A stored response that does not exist for this caller (unknown, expired, deleted, or
    /// another key's).
    ResponseNotFound,
    /// A hosted tool (web search, ...) for a provider that cannot run it.
    UnsupportedTool,
    /// A reasoning item's `encrypted_content` this gateway did not seal, or altered.
    InvalidEncryptedContent,
    /// 404: `/proxy/{unknown or unconfigured}/...`.
    UnknownProxyProvider,
    /// 405
    MethodNotAllowed,
    /// 408: the client was too slow sending its body.
    BodyTimeout,
    /// 413
    RequestTooLarge,
    /// 429: a rate limit or the concurrency limit.
    RateLimitExceeded,
    /// 429: the budget is spent.
    InsufficientQuota,
    /// 500
    InternalError,
    /// 502
    UpstreamConnectError,
    UpstreamError,
    UpstreamInvalidResponse,
    UpstreamResponseTooLarge,
    UpstreamInvalidOutput,
    UpstreamIdleTimeout,
    /// 503: load shedding.
    Overloaded,
    NoHealthyBackend,
    LimitsUnavailable,
    /// 503: more than `server.max_connections` requests in flight.
    ServerBusy,
    /// 504: no response headers within the first-byte timeout.
    UpstreamTimeout,
    /// 504: the request's total time ran out.
    Deadline,
}

impl Code {
    pub fn status(self) -> u16 {
        use Code::*;
        match self {
            InvalidJson
            | TooManyFields
            | InvalidValue
            | MissingModel
            | ProviderNotDetermined
            | UnknownProvider
            | ProviderNotConfigured
            | InvalidRequest
            | UnsupportedRequest
            | InvalidModel
            | InvalidPath
            | InvalidBody
            | UnsupportedTool
            | InvalidEncryptedContent
            | ContentBlocked => 400,
            MissingApiKey | InvalidApiKey | ExpiredApiKey | InvalidToken | InvalidAdminKey => 401,
            ReadOnly | AlreadyExists => 409,
            InvalidField => 422,
            ModelNotAllowed | ModelNotPriced | ProxyNotAllowed | McpNotExposed | A2aNotExposed => {
                403
            }
            NotFound | UnknownProxyProvider | ResponseNotFound => 404,
            MethodNotAllowed => 405,
            BodyTimeout => 408,
            RequestTooLarge => 413,
            RateLimitExceeded | InsufficientQuota => 429,
            InternalError => 500,
            UpstreamConnectError
            | UpstreamError
            | UpstreamInvalidResponse
            | UpstreamResponseTooLarge
            | UpstreamInvalidOutput
            | UpstreamIdleTimeout => 502,
            Overloaded | NoHealthyBackend | LimitsUnavailable | ServerBusy | StoreUnavailable
            | GuardrailUnavailable => 503,
            UpstreamTimeout | Deadline => 504,
        }
    }

    pub fn as_str(self) -> &'static str {
        use Code::*;
        match self {
            InvalidJson => "invalid_json",
            TooManyFields => "too_many_fields",
            InvalidValue => "invalid_value",
            MissingModel => "missing_model",
            ProviderNotDetermined => "provider_not_determined",
            UnknownProvider | UnknownProxyProvider => "unknown_provider",
            ProviderNotConfigured => "provider_not_configured",
            InvalidRequest => "invalid_request",
            UnsupportedRequest => "unsupported_request",
            InvalidModel => "invalid_model",
            InvalidPath => "invalid_path",
            InvalidBody => "invalid_body",
            MissingApiKey => "missing_api_key",
            InvalidApiKey => "invalid_api_key",
            ExpiredApiKey => "expired_api_key",
            InvalidToken => "invalid_token",
            ModelNotAllowed => "model_not_allowed",
            ModelNotPriced => "model_not_priced",
            ProxyNotAllowed => "proxy_not_allowed",
            McpNotExposed => "mcp_not_exposed",
            ContentBlocked => "content_blocked",
            GuardrailUnavailable => "guardrail_unavailable",
            A2aNotExposed => "a2a_not_exposed",
            NotFound => "not_found",
            InvalidAdminKey => "invalid_admin_key",
            StoreUnavailable => "store_unavailable",
            ReadOnly => "read_only",
            AlreadyExists => "already_exists",
            InvalidField => "invalid_field",
            ResponseNotFound => "response_not_found",
            UnsupportedTool => "unsupported_tool",
            InvalidEncryptedContent => "invalid_encrypted_content",
            MethodNotAllowed => "method_not_allowed",
            BodyTimeout | Deadline => "request_timeout",
            RequestTooLarge => "request_too_large",
            RateLimitExceeded => "rate_limit_exceeded",
            InsufficientQuota => "insufficient_quota",
            InternalError => "internal_error",
            UpstreamConnectError => "upstream_connect_error",
            UpstreamError => "upstream_error",
            UpstreamInvalidResponse => "upstream_invalid_response",
            UpstreamResponseTooLarge => "upstream_response_too_large",
            UpstreamInvalidOutput => "upstream_invalid_output",
            UpstreamIdleTimeout => "upstream_idle_timeout",
            Overloaded => "overloaded",
            NoHealthyBackend => "no_healthy_backend",
            LimitsUnavailable => "limits_unavailable",
            ServerBusy => "server_busy",
            UpstreamTimeout => "upstream_timeout",
        }
    }
}

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
    /// An error of the gateway's own: status and code from `code`.
    pub fn of(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            status: code.status(),
            message: message.into(),
            param: None,
            code: Some(code.as_str()),
            retry_after: None,
        }
    }

    /// A failed upstream call (connect, timeouts, reset, size): its status and code come from
    /// `UpstreamError`, the one place that maps them.
    pub fn upstream(e: &crate::upstream::UpstreamError, provider: &str) -> Self {
        ApiError {
            status: e.status(),
            message: e.message(provider),
            param: None,
            code: Some(e.code()),
            retry_after: None,
        }
    }

    pub fn param(mut self, p: &'static str) -> Self {
        self.param = Some(p);
        self
    }

    pub fn retry_after(mut self, d: std::time::Duration) -> Self {
        self.retry_after = Some(d);
        self
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
