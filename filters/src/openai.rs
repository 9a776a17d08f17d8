//! OpenAI wire types (Chat Completions, models, errors).
//!
//! Every object keeps the fields it does not name in `extra`, so parameters a provider adds
//! tomorrow pass through the gateway untouched.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::usage::Usage;

/// `POST /v1/chat/completions` request body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// A string, an array of content parts, or null (assistant messages with tool calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDef>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionCall>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// Non-streaming `chat.completion` response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub index: u32,
    pub message: ChatMessage,
    pub finish_reason: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One streamed `chat.completion.chunk`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `GET /v1/models` response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<Model>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// Which gateway provider serves this id (an extension the Go gateway introduced).
    pub served_by: String,
    /// `?include=context_window`: from the model table (`null` when it has no entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<Option<ContextWindow>>,
    /// `?include=pricing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Option<Pricing>>,
    /// `?include=modalities`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modalities: Option<Option<Modalities>>,
}

/// The Go gateway's `ContextWindow` (its SDK parses these names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextWindow {
    pub tokens: u64,
    /// `runtime`, `provider` or `community`.
    pub source: String,
}

/// The Go gateway's `Pricing`: decimal strings, in `currency` per single token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pricing {
    pub currency: String,
    pub input_per_token: String,
    pub output_per_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_per_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_token: Option<String>,
    /// `provider` or `community`.
    pub source: String,
    /// RFC 3339.
    pub updated_at: String,
    #[serde(default)]
    pub subscription: bool,
}

/// The Go gateway's `ModelModalities`: `text`, `image`, `audio`, `video`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Modalities {
    pub input: Vec<String>,
    pub output: Vec<String>,
}

/// USD per million tokens as the per-token decimal string the Go gateway's SDK reads
/// (`2.5` -> `"0.0000025"`): the decimal point moved six places on the number's shortest
/// exact text, so no binary rounding shows.
pub fn per_token(per_million: f64) -> String {
    let s = format!("{per_million}");
    let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
    let digits = format!("{int}{frac}");
    // The value is digits * 10^-(frac.len() + 6).
    let scale = frac.len() + 6;
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return "0".into();
    }
    let out = if digits.len() > scale {
        let (a, b) = digits.split_at(digits.len() - scale);
        format!("{a}.{b}")
    } else {
        format!("0.{}{digits}", "0".repeat(scale - digits.len()))
    };
    let out = out.trim_end_matches('0');
    out.trim_end_matches('.').to_string()
}

/// OpenAI's error envelope `{"error":{"message","type","param","code"}}`. The official SDKs map
/// it (plus the HTTP status) to typed exceptions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ErrorEnvelope {
    pub fn new(
        message: impl Into<String>,
        kind: &str,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Self {
        Self {
            error: ErrorBody {
                message: message.into(),
                kind: kind.to_string(),
                param: param.map(str::to_string),
                code: code.map(str::to_string),
            },
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("error envelope serializes")
    }

    /// True if `body` already is an OpenAI-style error envelope (an object whose `error` is an
    /// object with a `message`), so it can be relayed unchanged.
    pub fn is_envelope(body: &[u8]) -> bool {
        #[derive(Deserialize)]
        struct Probe {
            #[allow(dead_code)]
            error: ProbeInner,
        }
        #[derive(Deserialize)]
        struct ProbeInner {
            #[allow(dead_code)]
            message: String,
        }
        serde_json::from_slice::<Probe>(body).is_ok()
    }
}

/// The `type` OpenAI uses for an HTTP status.
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        400 | 404 | 405 | 409 | 413 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_keeps_unknown_fields() {
        let src = r#"{"model":"m","messages":[{"role":"user","content":"hi","x_extra":1}],"stream":true,
            "stream_options":{"include_usage":true},"seed":42,"reasoning_effort":"low"}"#;
        let req: ChatCompletionRequest = serde_json::from_str(src).unwrap();
        assert_eq!(req.extra["seed"], 42);
        assert_eq!(req.messages[0].extra["x_extra"], 1);
        let back: Value = serde_json::to_value(&req).unwrap();
        let orig: Value = serde_json::from_str(src).unwrap();
        assert_eq!(back, orig);
    }

    #[test]
    fn envelope_detection() {
        assert!(ErrorEnvelope::is_envelope(
            br#"{"error":{"message":"x","type":"y"}}"#
        ));
        assert!(!ErrorEnvelope::is_envelope(br#"{"error":"x"}"#));
        assert!(!ErrorEnvelope::is_envelope(b"<html>"));
        let e = ErrorEnvelope::new("m", "invalid_request_error", Some("model"), None);
        assert_eq!(
            String::from_utf8(e.to_bytes()).unwrap(),
            r#"{"error":{"message":"m","type":"invalid_request_error","param":"model","code":null}}"#
        );
    }
}

#[cfg(test)]
mod per_token_tests {
    #[test]
    fn per_million_to_per_token() {
        assert_eq!(super::per_token(2.5), "0.0000025");
        assert_eq!(super::per_token(10.0), "0.00001");
        assert_eq!(super::per_token(0.075), "0.000000075");
        assert_eq!(super::per_token(15.0), "0.000015");
        assert_eq!(super::per_token(1500000.0), "1.5");
        assert_eq!(super::per_token(0.0), "0");
    }
}
