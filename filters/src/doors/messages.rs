//! The Anthropic Messages door (`POST /v1/messages`).
//!
//! - [`decode_request`]: a Messages request as the canonical Chat Completions request, with the
//!   fields Chat Completions cannot carry named as dropped.
//! - [`encode_response`], [`MessagesEncoder`]: a `chat.completion` as a `message`, a chunk stream
//!   as Messages events in the order Anthropic's SDKs expect (`message_start`, `ping`,
//!   `content_block_start` / `_delta` / `_stop` per block, `message_delta` with the stop reason
//!   and usage, `message_stop`; `error` on failure).
//! - [`encode_error`]: an OpenAI error envelope as Anthropic's, with Anthropic's status codes.
//! - [`PassthroughObserver`]: a relayed native stream (Messages to an Anthropic provider), passed
//!   byte for byte while its usage and tool calls are read for limits and metrics.

use bytes::BytesMut;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{Canonical, DecodeError, LeanChunk, StreamEncoder};
use crate::dialects::anthropic::NativeUsage;
use crate::dialects::StreamTranslator;
use crate::openai::{
    ChatCompletion, ChatCompletionRequest, ChatMessage, FunctionCall, FunctionDef, StreamOptions,
    Tool, ToolCall,
};
use crate::sse::{encode_named, EventTooLarge, SseDecoder};
use crate::stream_relay::StreamEnd;
use crate::usage::{StreamStats, Usage};

/// A `POST /v1/messages` body. Fields the gateway does not name are kept in `extra`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MessagesRequest {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub messages: Vec<InputMessage>,
    /// A string or an array of text blocks.
    #[serde(default)]
    pub system: Option<Value>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<u64>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub thinking: Option<Value>,
    #[serde(default)]
    pub service_tier: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct InputMessage {
    pub role: String,
    /// A string or an array of content blocks.
    pub content: Value,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The canonical request a Messages request decodes to.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub chat: ChatCompletionRequest,
    /// Fields and blocks Chat Completions cannot carry (`x-gateway-dropped-params`).
    pub dropped: Vec<String>,
}

/// Decodes a Messages request into the canonical Chat Completions request.
pub fn decode_request(body: &[u8]) -> Result<Decoded, DecodeError> {
    let req: MessagesRequest = serde_json::from_slice(body)
        .map_err(|e| DecodeError::new(format!("Invalid Messages request: {e}"), None))?;
    decode(req)
}

fn decode(req: MessagesRequest) -> Result<Decoded, DecodeError> {
    let mut dropped = Vec::new();
    if req.model.is_empty() {
        return Err(DecodeError::new("model: Field required", Some("model")));
    }
    let max_tokens = req
        .max_tokens
        .ok_or_else(|| DecodeError::new("max_tokens: Field required", Some("max_tokens")))?;
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = &req.system {
        let text = system_text(system)?;
        if !text.is_empty() {
            messages.push(ChatMessage {
                role: "system".into(),
                content: Some(Value::String(text)),
                ..Default::default()
            });
        }
    }
    for (i, m) in req.messages.iter().enumerate() {
        match m.role.as_str() {
            "user" => decode_user(i, &m.content, &mut messages, &mut dropped)?,
            "assistant" => decode_assistant(i, &m.content, &mut messages, &mut dropped)?,
            other => {
                return Err(DecodeError::new(
                    format!(
                        "messages.{i}.role: Input should be 'user' or 'assistant', got {other:?}"
                    ),
                    Some("messages"),
                ))
            }
        }
    }
    let mut extra = Map::new();
    // No tools left (all were Anthropic's server tools): none at all, and no choice among
    // them (OpenAI refuses `tools: []` and a `tool_choice` without tools).
    let tools = match &req.tools {
        Some(tools) => Some(decode_tools(tools, &mut dropped)?).filter(|t| !t.is_empty()),
        None => None,
    };
    let tool_choice = match (&req.tool_choice, &tools) {
        (Some(tc), Some(_)) => decode_tool_choice(tc, &mut extra)?,
        (Some(_), None) => {
            dropped.push("tool_choice".into());
            None
        }
        (None, _) => None,
    };
    if let Some(user) = req
        .metadata
        .as_ref()
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        extra.insert("user".into(), Value::String(user.to_string()));
    }
    if req.top_k.is_some() {
        dropped.push("top_k".into());
    }
    if let Some(effort) = req.thinking.as_ref().and_then(thinking_effort) {
        extra.insert("reasoning_effort".into(), Value::String(effort.into()));
    }
    match req.service_tier.as_deref() {
        Some("auto") => {
            extra.insert("service_tier".into(), "auto".into());
        }
        Some("standard_only") => {
            extra.insert("service_tier".into(), "default".into());
        }
        Some(_) => dropped.push("service_tier".into()),
        None => {}
    }
    for (k, v) in &req.extra {
        match k.as_str() {
            // Structured outputs: the JSON schema the answer must follow.
            "output_format" => match json_schema_format(v) {
                Some(rf) => {
                    extra.insert("response_format".into(), rf);
                }
                None => dropped.push(k.clone()),
            },
            "output_config" => {
                match v.get("format").and_then(json_schema_format) {
                    Some(rf) => {
                        extra.insert("response_format".into(), rf);
                    }
                    None => dropped.push(k.clone()),
                }
                if let Some(effort) = v.get("effort").and_then(Value::as_str) {
                    extra.insert("reasoning_effort".into(), Value::String(effort.into()));
                }
            }
            _ => dropped.push(k.clone()),
        }
    }
    let stream = req.stream.unwrap_or(false);
    Ok(Decoded {
        chat: ChatCompletionRequest {
            model: req.model,
            messages,
            stream: stream.then_some(true),
            // The encoder needs the usage chunk for `message_delta`.
            stream_options: stream.then(|| StreamOptions {
                include_usage: Some(true),
                ..Default::default()
            }),
            tools,
            tool_choice,
            max_tokens: Some(max_tokens),
            max_completion_tokens: None,
            temperature: req.temperature,
            top_p: req.top_p,
            stop: req.stop_sequences.map(|s| json!(s)),
            extra,
        },
        dropped,
    })
}

/// `thinking` as a `reasoning_effort`: the budget's size class (Anthropic's own guidance: 1,024
/// is the minimum, 16k+ for complex tasks). Adaptive thinking leaves the effort to the model.
fn thinking_effort(t: &Value) -> Option<&'static str> {
    match t.get("type").and_then(Value::as_str)? {
        "enabled" => {
            let budget = t.get("budget_tokens").and_then(Value::as_u64).unwrap_or(0);
            Some(match budget {
                0..=4095 => "low",
                4096..=16383 => "medium",
                _ => "high",
            })
        }
        "adaptive" => Some("medium"),
        _ => None,
    }
}

/// `{type: "json_schema", schema}` as OpenAI's `response_format`.
fn json_schema_format(v: &Value) -> Option<Value> {
    if v.get("type").and_then(Value::as_str) != Some("json_schema") {
        return None;
    }
    let schema = v.get("schema")?;
    Some(json!({
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": true}
    }))
}

fn system_text(system: &Value) -> Result<String, DecodeError> {
    match system {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut out = String::new();
            for (i, b) in blocks.iter().enumerate() {
                let text = b
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|_| b.get("type").and_then(Value::as_str) == Some("text"))
                    .ok_or_else(|| {
                        DecodeError::new(
                            format!("system.{i}: only text blocks are allowed in system"),
                            Some("system"),
                        )
                    })?;
                if !out.is_empty() {
                    out.push_str("\n\n");
                }
                out.push_str(text);
            }
            Ok(out)
        }
        Value::Null => Ok(String::new()),
        _ => Err(DecodeError::new(
            "system: Input should be a string or a list of text blocks",
            Some("system"),
        )),
    }
}

/// The blocks of a message's content (a string is one text block).
fn blocks(i: usize, content: &Value) -> Result<Vec<Value>, DecodeError> {
    match content {
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(a) => Ok(a.clone()),
        _ => Err(DecodeError::new(
            format!("messages.{i}.content: Input should be a string or a list of content blocks"),
            Some("messages"),
        )),
    }
}

fn block_type(b: &Value) -> &str {
    b.get("type").and_then(Value::as_str).unwrap_or("")
}

/// A user turn: its `tool_result` blocks become `tool` messages (first, as Chat Completions
/// wants them right after the assistant's calls), the rest one user message.
fn decode_user(
    i: usize,
    content: &Value,
    out: &mut Vec<ChatMessage>,
    dropped: &mut Vec<String>,
) -> Result<(), DecodeError> {
    let mut parts = Vec::new();
    for b in blocks(i, content)? {
        match block_type(&b) {
            "tool_result" => {
                let id = b
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        DecodeError::new(
                            format!("messages.{i}: tool_result.tool_use_id: Field required"),
                            Some("messages"),
                        )
                    })?;
                out.push(ChatMessage {
                    role: "tool".into(),
                    content: Some(Value::String(tool_result_text(&b, dropped))),
                    tool_call_id: Some(id.to_string()),
                    ..Default::default()
                });
            }
            _ => {
                if let Some(p) = user_part(i, &b, dropped)? {
                    parts.push(p);
                }
            }
        }
    }
    if !parts.is_empty() {
        out.push(ChatMessage {
            role: "user".into(),
            content: Some(simplify(parts)),
            ..Default::default()
        });
    }
    Ok(())
}

/// A single text part as a plain string (what every OpenAI-compatible server takes).
fn simplify(parts: Vec<Value>) -> Value {
    if parts.len() == 1 && parts[0].get("type").and_then(Value::as_str) == Some("text") {
        if let Some(t) = parts[0].get("text").and_then(Value::as_str) {
            return Value::String(t.to_string());
        }
    }
    Value::Array(parts)
}

/// A tool result's content as text (Chat Completions tool messages carry text only).
fn tool_result_text(b: &Value, dropped: &mut Vec<String>) -> String {
    let text = match b.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (block_type(p), p.get("text").and_then(Value::as_str)) {
                    ("text", Some(t)) => {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(t);
                    }
                    (other, _) => push_once(dropped, format!("tool_result.{other}")),
                }
            }
            text
        }
        _ => String::new(),
    };
    if b.get("is_error").and_then(Value::as_bool) == Some(true) && !text.starts_with("Error") {
        // Chat Completions has no error flag on tool results: say it in the text.
        format!("Error: {text}")
    } else {
        text
    }
}

fn push_once(dropped: &mut Vec<String>, name: String) {
    if !dropped.contains(&name) {
        dropped.push(name);
    }
}

fn user_part(i: usize, b: &Value, dropped: &mut Vec<String>) -> Result<Option<Value>, DecodeError> {
    let bad = |what: &str| DecodeError::new(format!("messages.{i}: {what}"), Some("messages"));
    Ok(match block_type(b) {
        "text" => {
            let t = b
                .get("text")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("text.text: Field required"))?;
            Some(json!({"type": "text", "text": t}))
        }
        "image" => {
            let src = b
                .get("source")
                .ok_or_else(|| bad("image.source: Field required"))?;
            let url =
                match src.get("type").and_then(Value::as_str) {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        src.get("media_type")
                            .and_then(Value::as_str)
                            .unwrap_or("image/png"),
                        src.get("data").and_then(Value::as_str).unwrap_or("")
                    ),
                    Some("url") => src
                        .get("url")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad("image.source.url: Field required"))?
                        .to_string(),
                    _ => return Err(bad(
                        "image sources must be base64 or url here (file ids are Anthropic's alone)",
                    )),
                };
            Some(json!({"type": "image_url", "image_url": {"url": url}}))
        }
        "document" => {
            let src = b
                .get("source")
                .ok_or_else(|| bad("document.source: Field required"))?;
            match src.get("type").and_then(Value::as_str) {
                Some("base64") => {
                    let mime = src
                        .get("media_type")
                        .and_then(Value::as_str)
                        .unwrap_or("application/pdf");
                    let data = src.get("data").and_then(Value::as_str).unwrap_or("");
                    let name = b
                        .get("title")
                        .and_then(Value::as_str)
                        .unwrap_or("document.pdf");
                    Some(json!({"type": "file", "file": {
                        "file_data": format!("data:{mime};base64,{data}"),
                        "filename": name,
                    }}))
                }
                Some("text") => Some(json!({
                    "type": "text",
                    "text": src.get("data").and_then(Value::as_str).unwrap_or(""),
                })),
                Some("content") => {
                    let text = match src.get("content") {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Array(a)) => a
                            .iter()
                            .filter_map(|p| p.get("text").and_then(Value::as_str))
                            .collect::<Vec<_>>()
                            .join("\n"),
                        _ => String::new(),
                    };
                    Some(json!({"type": "text", "text": text}))
                }
                _ => {
                    return Err(bad(
                        "document sources must be base64, text or content here (url and file sources are Anthropic's alone)",
                    ))
                }
            }
        }
        // Reasoning state only Anthropic reads (and Anthropic providers get the request as sent).
        "thinking" | "redacted_thinking" => None,
        other => {
            push_once(dropped, format!("content.{other}"));
            None
        }
    })
}

fn decode_assistant(
    i: usize,
    content: &Value,
    out: &mut Vec<ChatMessage>,
    dropped: &mut Vec<String>,
) -> Result<(), DecodeError> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in blocks(i, content)? {
        match block_type(&b) {
            "text" => {
                if let Some(t) = b.get("text").and_then(Value::as_str) {
                    text.push_str(t);
                }
            }
            "tool_use" => {
                let (Some(id), Some(name)) = (
                    b.get("id").and_then(Value::as_str),
                    b.get("name").and_then(Value::as_str),
                ) else {
                    return Err(DecodeError::new(
                        format!("messages.{i}: tool_use needs id and name"),
                        Some("messages"),
                    ));
                };
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(ToolCall {
                    id: Some(id.to_string()),
                    kind: Some("function".into()),
                    function: Some(FunctionCall {
                        name: Some(name.to_string()),
                        arguments: Some(input.to_string()),
                    }),
                    ..Default::default()
                });
            }
            "thinking" | "redacted_thinking" => {}
            other => push_once(dropped, format!("content.{other}")),
        }
    }
    if text.is_empty() && calls.is_empty() {
        return Ok(());
    }
    out.push(ChatMessage {
        role: "assistant".into(),
        content: (!text.is_empty()).then_some(Value::String(text)),
        tool_calls: (!calls.is_empty()).then_some(calls),
        ..Default::default()
    });
    Ok(())
}

/// Client tools become functions; Anthropic's server tools (web search, code execution, bash,
/// ...) exist only on Anthropic and are dropped by name.
fn decode_tools(tools: &[Value], dropped: &mut Vec<String>) -> Result<Vec<Tool>, DecodeError> {
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let kind = t.get("type").and_then(Value::as_str).unwrap_or("custom");
        if kind != "custom" {
            push_once(dropped, format!("tools.{kind}"));
            continue;
        }
        let name = t.get("name").and_then(Value::as_str).ok_or_else(|| {
            DecodeError::new(format!("tools.{i}.name: Field required"), Some("tools"))
        })?;
        out.push(Tool {
            kind: "function".into(),
            function: Some(FunctionDef {
                name: name.to_string(),
                description: t
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                parameters: Some(
                    t.get("input_schema")
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                ),
                extra: Map::new(),
            }),
            extra: Map::new(),
        });
    }
    Ok(out)
}

fn decode_tool_choice(
    tc: &Value,
    extra: &mut Map<String, Value>,
) -> Result<Option<Value>, DecodeError> {
    if tc.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
        extra.insert("parallel_tool_calls".into(), Value::Bool(false));
    }
    Ok(Some(match tc.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = tc.get("name").and_then(Value::as_str).ok_or_else(|| {
                DecodeError::new("tool_choice.name: Field required", Some("tool_choice"))
            })?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => {
            return Err(DecodeError::new(
                "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'",
                Some("tool_choice"),
            ))
        }
    }))
}

// ---- relays --------------------------------------------------------------------------------

/// A Messages request as relayed to a provider of the same API: the client's body with the
/// routed `model`, and an alias's defaults (Chat Completions names given in Messages terms;
/// what Messages cannot take is left out; the client's own values win) and system prefix.
/// Returns the body and whether it asks for a stream.
pub fn relay_body(
    body: &[u8],
    model: &str,
    defaults: &Map<String, Value>,
    system_prefix: Option<&str>,
) -> Result<(Vec<u8>, bool), DecodeError> {
    let mut obj = crate::json_object::RawObject::parse(body)
        .map_err(|e| DecodeError::new(format!("Invalid JSON: {e}"), None))?;
    obj.set("model", model);
    for (k, v) in defaults {
        let key = match k.as_str() {
            "max_tokens" | "max_completion_tokens" => "max_tokens",
            "stop" => "stop_sequences",
            k @ ("temperature" | "top_p" | "top_k" | "metadata" | "thinking" | "service_tier") => k,
            _ => continue,
        };
        if !obj.contains(key) {
            match (key, v) {
                ("stop_sequences", Value::String(s)) => obj.set(key, &[s]),
                _ => obj.set(key, v),
            }
        }
    }
    if let Some(prefix) = system_prefix {
        let system = match obj.get_as::<Value>("system") {
            Ok(Some(Value::String(s))) => Value::String(format!("{prefix}\n\n{s}")),
            Ok(Some(Value::Array(mut blocks))) => {
                blocks.insert(0, json!({"type": "text", "text": prefix}));
                Value::Array(blocks)
            }
            _ => Value::String(prefix.to_string()),
        };
        obj.set("system", &system);
    }
    let stream = obj
        .get_as::<bool>("stream")
        .map_err(|_| DecodeError::new("stream: Input should be a valid boolean", Some("stream")))?
        .unwrap_or(false);
    Ok((obj.to_vec(), stream))
}

// ---- answers ---------------------------------------------------------------------------------

/// A chat `finish_reason` as a Messages `stop_reason`.
fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// A message id: Anthropic's prefix on the canonical id.
fn message_id(id: &str) -> String {
    let bare = id.strip_prefix("chatcmpl-").unwrap_or(id);
    if bare.starts_with("msg_") {
        bare.to_string()
    } else {
        format!("msg_{bare}")
    }
}

/// Canonical usage as Messages usage: Anthropic's `input_tokens` excludes cache reads and writes.
fn messages_usage(u: Option<&Usage>) -> Value {
    let Some(u) = u else {
        return json!({"input_tokens": 0, "output_tokens": 0});
    };
    let read = u
        .prompt_tokens_details
        .as_ref()
        .and_then(|d| d.cached_tokens)
        .unwrap_or(0);
    let write = u
        .extra
        .get("cache_creation_input_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    json!({
        "input_tokens": u.prompt_tokens.saturating_sub(read).saturating_sub(write),
        "output_tokens": u.completion_tokens,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write,
    })
}

/// Tool arguments as the `input` object (`{}` when they are not a JSON object, which Messages
/// cannot carry).
fn tool_input(arguments: Option<&str>) -> Value {
    match arguments.map(serde_json::from_str::<Value>) {
        Some(Ok(v @ Value::Object(_))) => v,
        _ => json!({}),
    }
}

/// The thinking blocks of a canonical assistant message: signed `thinking_blocks` when an
/// Anthropic model wrote them, else its `reasoning_content` (DeepSeek, vLLM...) unsigned.
fn thinking_of(extra: &Map<String, Value>) -> Vec<Value> {
    if let Some(Value::Array(blocks)) = extra.get("thinking_blocks") {
        return blocks.clone();
    }
    match extra.get("reasoning_content").and_then(Value::as_str) {
        Some(r) if !r.is_empty() => {
            vec![json!({"type": "thinking", "thinking": r, "signature": ""})]
        }
        _ => vec![],
    }
}

/// Encodes a `chat.completion` as a Messages `message`.
pub fn encode_response(chat: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let c: ChatCompletion = serde_json::from_slice(chat)
        .map_err(|e| DecodeError::new(format!("not a chat completion: {e}"), None))?;
    let choice = c.choices.into_iter().next();
    let mut content = Vec::new();
    let mut finish = None;
    if let Some(choice) = choice {
        let m = choice.message;
        content.extend(thinking_of(&m.extra));
        match &m.content {
            Some(Value::String(s)) if !s.is_empty() => {
                content.push(json!({"type": "text", "text": s}))
            }
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        content.push(json!({"type": "text", "text": t}));
                    }
                }
            }
            _ => {}
        }
        for call in m.tool_calls.unwrap_or_default() {
            let f = call.function.unwrap_or_default();
            content.push(json!({
                "type": "tool_use",
                "id": call.id.unwrap_or_default(),
                "name": f.name.unwrap_or_default(),
                "input": tool_input(f.arguments.as_deref()),
            }));
        }
        finish = choice.finish_reason;
    }
    let msg = json!({
        "id": message_id(&c.id),
        "type": "message",
        "role": "assistant",
        "model": c.model,
        "content": content,
        "stop_reason": stop_reason(finish.as_deref()),
        "stop_sequence": null,
        "usage": messages_usage(c.usage.as_ref()),
    });
    Ok(serde_json::to_vec(&msg).expect("serializes"))
}

/// Anthropic's status and error type for a gateway status.
pub fn error_status_and_type(status: u16) -> (u16, &'static str) {
    match status {
        400 | 405 | 409 | 415 | 422 => (status, "invalid_request_error"),
        401 => (401, "authentication_error"),
        402 => (402, "billing_error"),
        403 => (403, "permission_error"),
        404 => (404, "not_found_error"),
        408 | 504 => (504, "timeout_error"),
        413 => (413, "request_too_large"),
        429 => (429, "rate_limit_error"),
        503 | 529 => (529, "overloaded_error"),
        400..=499 => (status, "invalid_request_error"),
        _ => (status.max(500), "api_error"),
    }
}

/// An error body of any shape as Anthropic's envelope; the gateway's own code (or the
/// provider's type) stays in the message.
pub fn encode_error(status: u16, body: &[u8]) -> (u16, Vec<u8>) {
    let (status, kind) = error_status_and_type(status);
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let err = v.get("error");
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let code = err.and_then(|e| e.get("code")).and_then(Value::as_str);
    let message = match code {
        Some(c) if !message.contains(c) => format!("{message} ({c})"),
        _ => message,
    };
    let out = json!({"type": "error", "error": {"type": kind, "message": message}});
    (status, serde_json::to_vec(&out).expect("serializes"))
}

/// The `event: error` a stream ends with on failure.
fn error_event(kind: &str, message: &str, out: &mut BytesMut) {
    let e = json!({"type": "error", "error": {"type": kind, "message": message}});
    encode_named("error", e.to_string().as_bytes(), out);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
    /// A tool call, by its canonical index.
    Tool(u32),
}

/// Encodes a canonical chunk stream as Messages events.
pub struct MessagesEncoder {
    decoder: SseDecoder,
    started: bool,
    finished: bool,
    /// Model named in `message_start` when the stream does not name one.
    model: String,
    open: Option<Open>,
    next_index: u32,
    stop_reason: Option<&'static str>,
    usage: Option<Usage>,
}

impl MessagesEncoder {
    pub fn new(model: &str) -> Self {
        MessagesEncoder {
            decoder: SseDecoder::new(),
            started: false,
            finished: false,
            model: model.to_string(),
            open: None,
            next_index: 0,
            stop_reason: None,
            usage: None,
        }
    }

    fn event(&self, name: &str, v: Value, out: &mut BytesMut) {
        encode_named(name, v.to_string().as_bytes(), out);
    }

    fn start(&mut self, id: &str, model: &str, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let model = if model.is_empty() { &self.model } else { model };
        let id = if id.is_empty() {
            "msg_gateway".to_string()
        } else {
            message_id(id)
        };
        self.event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
            out,
        );
        self.event("ping", json!({"type": "ping"}), out);
    }

    fn close(&mut self, out: &mut BytesMut) {
        if self.open.take().is_some() {
            let index = self.next_index - 1;
            self.event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
                out,
            );
        }
    }

    fn open_block(&mut self, kind: Open, block: Value, out: &mut BytesMut) -> u32 {
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some(kind);
        self.event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
            out,
        );
        index
    }

    fn delta(&self, delta: Value, out: &mut BytesMut) {
        let index = self.next_index - 1;
        self.event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
            out,
        );
    }

    /// A text-like delta (`text_delta`, `thinking_delta`, `input_json_delta`), written straight
    /// into `out`: the per-token path builds no JSON tree.
    fn text_delta(&self, kind: &str, field: &str, text: &str, out: &mut BytesMut) {
        use bytes::BufMut;
        use std::fmt::Write as _;
        out.reserve(96 + text.len());
        let _ = write!(
            out,
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":{},\"delta\":{{\"type\":\"{kind}\",\"{field}\":",
            self.next_index - 1
        );
        let _ = serde_json::to_writer(out.writer(), text);
        out.extend_from_slice(b"}}\n\n");
    }

    fn chunk(&mut self, c: LeanChunk<'_>, out: &mut BytesMut) {
        self.start(&c.id, &c.model, out);
        if let Some(u) = c.usage {
            self.usage = Some(u);
        }
        let Some(choice) = c.choices.into_iter().next() else {
            return;
        };
        let d = choice.delta;
        if let Some(r) = d.reasoning_content.as_deref().filter(|r| !r.is_empty()) {
            if self.open != Some(Open::Thinking) {
                self.open_block(
                    Open::Thinking,
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    out,
                );
            }
            self.text_delta("thinking_delta", "thinking", r, out);
        }
        for b in d.thinking_blocks.iter().flatten() {
            self.thinking_block(b, out);
        }
        if let Some(t) = d.content.as_deref().filter(|t| !t.is_empty()) {
            if self.open != Some(Open::Text) {
                self.open_block(Open::Text, json!({"type": "text", "text": ""}), out);
            }
            self.text_delta("text_delta", "text", t, out);
        }
        for call in d.tool_calls.unwrap_or_default() {
            let index = call.index.unwrap_or(0);
            let f = call.function.unwrap_or_default();
            if self.open != Some(Open::Tool(index)) {
                let id = call
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("toolu_gateway_{index}"));
                self.open_block(
                    Open::Tool(index),
                    json!({"type": "tool_use", "id": id, "name": f.name.clone().unwrap_or_default(), "input": {}}),
                    out,
                );
            }
            if let Some(args) = f.arguments.as_deref().filter(|a| !a.is_empty()) {
                self.text_delta("input_json_delta", "partial_json", args, out);
            }
        }
        if let Some(f) = choice.finish_reason {
            self.close(out);
            self.stop_reason = Some(stop_reason(Some(&f)));
        }
    }

    /// A signed block, sent by the canonical stream once it is complete (after its text was
    /// streamed as `reasoning_content`).
    fn thinking_block(&mut self, b: &Value, out: &mut BytesMut) {
        match block_type(b) {
            "thinking" => {
                let signature = b.get("signature").and_then(Value::as_str).unwrap_or("");
                if self.open != Some(Open::Thinking) {
                    let thinking = b.get("thinking").and_then(Value::as_str).unwrap_or("");
                    self.open_block(
                        Open::Thinking,
                        json!({"type": "thinking", "thinking": "", "signature": ""}),
                        out,
                    );
                    if !thinking.is_empty() {
                        self.delta(json!({"type": "thinking_delta", "thinking": thinking}), out);
                    }
                }
                if !signature.is_empty() {
                    self.delta(
                        json!({"type": "signature_delta", "signature": signature}),
                        out,
                    );
                }
                self.close(out);
            }
            "redacted_thinking" => {
                let data = b.get("data").cloned().unwrap_or(Value::Null);
                self.open_block(
                    Open::Thinking,
                    json!({"type": "redacted_thinking", "data": data}),
                    out,
                );
                self.close(out);
            }
            _ => {}
        }
    }

    fn done(&mut self, out: &mut BytesMut) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.start("", "", out);
        self.close(out);
        self.event(
            "message_delta",
            json!({"type": "message_delta",
                "delta": {"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null},
                "usage": messages_usage(self.usage.as_ref())}),
            out,
        );
        self.event("message_stop", json!({"type": "message_stop"}), out);
    }
}

impl StreamEncoder for MessagesEncoder {
    fn feed(&mut self, canonical: &[u8], out: &mut BytesMut) {
        // The canonical stream is the gateway's own output: complete, bounded events.
        let _ = self.decoder.push(canonical);
        while let Some(ev) = self.decoder.next_event() {
            if self.finished {
                continue;
            }
            match super::classify(&ev) {
                Canonical::Keepalive => self.keepalive(out),
                Canonical::Done => self.done(out),
                Canonical::Error { message, code } => {
                    // Anthropic ends a failed stream with the error event alone.
                    let kind = match code.as_deref() {
                        Some(c) if c.contains("overloaded") => "overloaded_error",
                        _ => "api_error",
                    };
                    let message = match code.as_deref() {
                        Some(c) if !message.contains(c) => format!("{message} ({c})"),
                        _ => message,
                    };
                    error_event(kind, &message, out);
                    self.finished = true;
                }
                Canonical::Chunk(c) => self.chunk(c, out),
                Canonical::Skip => {}
            }
        }
    }

    fn keepalive(&self, out: &mut BytesMut) {
        encode_named("ping", br#"{"type": "ping"}"#, out);
    }
}

// ---- native relay ----------------------------------------------------------------------------

/// Relays an Anthropic Messages stream unchanged while reading its usage, tool calls and text
/// size; a stream that breaks gets Anthropic's `error` event.
pub struct PassthroughObserver {
    decoder: SseDecoder,
    usage: NativeUsage,
    seen_usage: bool,
    openai_usage: Option<Usage>,
    stats: StreamStats,
    stopped: bool,
}

impl PassthroughObserver {
    pub fn new(max_event_bytes: usize) -> Self {
        PassthroughObserver {
            decoder: SseDecoder::with_limit(max_event_bytes),
            usage: NativeUsage::default(),
            seen_usage: false,
            openai_usage: None,
            stats: StreamStats::default(),
            stopped: false,
        }
    }

    fn observe(&mut self, data: &[u8]) {
        #[derive(Deserialize)]
        struct Ev {
            #[serde(rename = "type", default)]
            kind: String,
            #[serde(default)]
            message: Option<MessageUsage>,
            #[serde(default)]
            usage: Option<NativeUsage>,
            #[serde(default)]
            content_block: Option<Value>,
            #[serde(default)]
            delta: Option<Value>,
        }
        #[derive(Deserialize)]
        struct MessageUsage {
            #[serde(default)]
            usage: Option<NativeUsage>,
        }
        let Ok(ev) = serde_json::from_slice::<Ev>(data) else {
            return;
        };
        let usage = ev.usage.or(ev.message.and_then(|m| m.usage));
        if let Some(u) = usage {
            self.usage.merge(&u);
            self.seen_usage = true;
            self.openai_usage = Some(self.usage.to_openai());
        }
        match ev.kind.as_str() {
            "content_block_start" => {
                if let Some(b) = &ev.content_block {
                    if block_type(b) == "tool_use" {
                        if let Some(n) = b.get("name").and_then(Value::as_str) {
                            self.stats.tool_calls.push(n.to_string());
                        }
                    }
                }
            }
            "content_block_delta" => {
                if let Some(d) = &ev.delta {
                    for k in ["text", "thinking", "partial_json"] {
                        if let Some(t) = d.get(k).and_then(Value::as_str) {
                            self.stats.text_bytes += t.len() as u64;
                        }
                    }
                }
            }
            "message_stop" | "error" => self.stopped = true,
            _ => {}
        }
    }
}

impl StreamTranslator for PassthroughObserver {
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), EventTooLarge> {
        out.extend_from_slice(chunk);
        self.decoder.push(chunk)?;
        while let Some(ev) = self.decoder.next_event() {
            if let Some(data) = ev.data {
                self.observe(&data);
            }
        }
        Ok(())
    }

    fn finish(&mut self, end: StreamEnd, out: &mut BytesMut) {
        if let Some(ev) = self.decoder.finish() {
            if let Some(data) = ev.data {
                self.observe(&data);
            }
        }
        if self.stopped {
            return;
        }
        let message = match end {
            StreamEnd::Clean => "the provider's stream ended before message_stop".to_string(),
            StreamEnd::Failed { message, code } => format!("{message} ({code})"),
        };
        // A partial event must not swallow the error event.
        out.extend_from_slice(b"\n\n");
        error_event("api_error", &message, out);
        self.stopped = true;
    }

    fn usage(&self) -> Option<&Usage> {
        self.openai_usage.as_ref().filter(|_| self.seen_usage)
    }

    fn stats(&self) -> &StreamStats {
        &self.stats
    }
}

/// Usage of a non-streamed Anthropic `message`, as canonical usage.
pub fn usage_of_message(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct M {
        usage: NativeUsage,
    }
    serde_json::from_slice::<M>(body)
        .ok()
        .map(|m| m.usage.to_openai())
}

/// Tool-call names of a non-streamed Anthropic `message`.
pub fn tool_calls_of_message(body: &[u8]) -> Vec<String> {
    #[derive(Deserialize)]
    struct M {
        #[serde(default)]
        content: Vec<Value>,
    }
    serde_json::from_slice::<M>(body)
        .map(|m| {
            m.content
                .iter()
                .filter(|b| block_type(b) == "tool_use")
                .filter_map(|b| b.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The documented estimate for `count_tokens` where the provider cannot count: one token per
/// four bytes of the system prompt, messages and tools as JSON (the bytes/4 rule the limits
/// use), at least 1.
pub fn estimate_input_tokens(body: &[u8]) -> Result<u64, DecodeError> {
    let req: MessagesRequest = serde_json::from_slice(body)
        .map_err(|e| DecodeError::new(format!("Invalid count_tokens request: {e}"), None))?;
    if req.model.is_empty() {
        return Err(DecodeError::new("model: Field required", Some("model")));
    }
    let mut bytes = 0usize;
    if let Some(s) = &req.system {
        bytes += match s {
            Value::String(s) => s.len(),
            v => v.to_string().len(),
        };
    }
    for m in &req.messages {
        bytes += match &m.content {
            Value::String(s) => s.len(),
            v => v.to_string().len(),
        };
    }
    if let Some(t) = &req.tools {
        bytes += serde_json::to_string(t).map_or(0, |s| s.len());
    }
    Ok((bytes as u64).div_ceil(4).max(1))
}
