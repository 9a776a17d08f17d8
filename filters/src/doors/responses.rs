//! The OpenAI Responses door (`POST /v1/responses`), its stateless codec:
//!
//! - [`decode_request`]: a Responses request (input items, instructions, function, `custom` and
//!   `local_shell` tools, `text.format`, `reasoning`) as the canonical Chat Completions request,
//!   with what needs the server (stored state, hosted tools) reported, not decided.
//! - [`encode_response`], [`ResponsesEncoder`]: a `chat.completion` as a `response` object, a
//!   chunk stream as the Responses event sequence, each event with its `sequence_number`.
//!
//! State (`previous_response_id`, `store`) and sealed reasoning items are the server's: this
//! module only reads and writes their wire form.

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use std::collections::HashMap;
use std::sync::Arc;

use super::{Canonical, DecodeError, LeanChunk, StreamEncoder};
use crate::openai::{
    ChatCompletion, ChatCompletionRequest, ChatMessage, FunctionCall, FunctionDef, StreamOptions,
    Tool, ToolCall,
};
use crate::reasoning::TurnState;
use crate::sse::{encode_named, SseDecoder};
use crate::usage::{StreamStats, Usage};

/// Marks `encrypted_content` sealed by a gateway (base64 never contains `:`); anything else is
/// a provider's own (OpenAI's) and is only meaningful to that provider.
pub const SEAL_PREFIX: &str = "igw1:";

/// Authenticated encryption of reasoning state (the gateway's key; pure code only sees this).
pub trait Sealer: Send + Sync {
    /// `SEAL_PREFIX` followed by the sealed bytes.
    fn seal(&self, plaintext: &[u8]) -> String;
    /// The plaintext, or `None` when the text was not sealed with this key or was altered.
    fn open(&self, sealed: &str) -> Option<Vec<u8>>;
}

/// A shared sealer (a newtype so the metadata can be `Debug`).
#[derive(Clone)]
pub struct SealerRef(pub Arc<dyn Sealer>);

impl std::fmt::Debug for SealerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

/// Ids the gateway issues carry this marker (`resp_gw_...`, `msg_gw_...`): they mean nothing
/// to an OpenAI Responses upstream and are removed from what is relayed to one.
pub const ID_MARKER: &str = "_gw_";

/// A `POST /v1/responses` body. Fields the gateway does not name are kept in `extra`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ResponsesRequest {
    #[serde(default)]
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_response_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The canonical request a Responses request decodes to, and what the server must decide.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub chat: ChatCompletionRequest,
    /// Fields Chat Completions cannot carry (`x-gateway-dropped-params`).
    pub dropped: Vec<String>,
    /// Hosted tools (web search, file search, code interpreter, ...): only an OpenAI Responses
    /// upstream runs them; anywhere else the request is refused naming them.
    pub hosted_tools: Vec<String>,
    /// Names of `custom` (freeform) tools: their calls go back as `custom_tool_call` items.
    pub custom_tools: Vec<String>,
    /// `store` (default true, as OpenAI).
    pub store: bool,
    pub previous_response_id: Option<String>,
    /// `include: ["reasoning.encrypted_content"]`: reasoning items carry sealed state.
    pub encrypted_reasoning: bool,
    /// Reasoning items of the input whose `encrypted_content` is a provider's own (OpenAI's):
    /// they can only go back to that provider.
    pub foreign_reasoning: usize,
    /// Input only an OpenAI Responses upstream can read (file ids, item references, content
    /// types chat has no part for), one message each: relayed there, refused elsewhere.
    pub native_only: Vec<String>,
}

/// The schema a `custom` tool gets as a function: one string argument.
fn custom_parameters() -> Value {
    json!({"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"], "additionalProperties": false})
}

/// The schema of Codex's `local_shell` tool as a function.
fn local_shell_parameters() -> Value {
    json!({"type": "object", "properties": {
        "command": {"type": "array", "items": {"type": "string"}},
        "workdir": {"type": "string"},
        "timeout_ms": {"type": "integer"},
        "env": {"type": "object", "additionalProperties": {"type": "string"}}
    }, "required": ["command"]})
}

/// Decodes a Responses request into the canonical Chat Completions request (no sealed
/// reasoning accepted: see [`decode_request_with`]).
pub fn decode_request(body: &[u8]) -> Result<Decoded, DecodeError> {
    decode_request_with(body, None)
}

/// Decodes a Responses request; reasoning items sealed by `sealer` put their provider state
/// (thinking blocks, signatures) back on their turn. A sealed item that does not open is
/// refused: state cannot be forged or moved between gateways with different keys.
pub fn decode_request_with(
    body: &[u8],
    sealer: Option<&dyn Sealer>,
) -> Result<Decoded, DecodeError> {
    let req = parse_request(body)?;
    decode_parsed(req, sealer)
}

/// A Responses request's typed form (fields it does not name kept in `extra`).
pub fn parse_request(body: &[u8]) -> Result<ResponsesRequest, DecodeError> {
    serde_json::from_slice(body).map_err(|e| {
        let param = mistyped_field(body);
        let message = match param {
            Some(f) => format!("Invalid type for '{f}': {e}"),
            None => format!("Invalid Responses request: {e}"),
        };
        DecodeError::new(message, param)
    })
}

/// The typed field a body that did not parse has the wrong type in (the error path only: serde's
/// message does not name it).
fn mistyped_field(body: &[u8]) -> Option<&'static str> {
    let v: Map<String, Value> = serde_json::from_slice(body).ok()?;
    let string: fn(&Value) -> bool = |v| v.is_string() || v.is_null();
    let number: fn(&Value) -> bool = |v| v.is_number() || v.is_null();
    let boolean: fn(&Value) -> bool = |v| v.is_boolean() || v.is_null();
    let array: fn(&Value) -> bool = |v| v.is_array() || v.is_null();
    let count: fn(&Value) -> bool = |v| v.is_u64() || v.is_null();
    type Check = (&'static str, fn(&Value) -> bool);
    let checks: [Check; 13] = [
        ("model", string),
        ("instructions", string),
        ("previous_response_id", string),
        ("user", string),
        ("service_tier", string),
        ("max_output_tokens", count),
        ("temperature", number),
        ("top_p", number),
        ("stream", boolean),
        ("store", boolean),
        ("parallel_tool_calls", boolean),
        ("tools", array),
        ("include", array),
    ];
    checks
        .into_iter()
        .find(|(f, ok)| v.get(*f).is_some_and(|x| !ok(x)))
        .map(|(f, _)| f)
}

/// [`decode_request_with`] on a parsed request (the server parses once, to read state fields).
pub fn decode_parsed(
    req: ResponsesRequest,
    sealer: Option<&dyn Sealer>,
) -> Result<Decoded, DecodeError> {
    if req.model.is_empty() {
        return Err(DecodeError::new(
            "Missing required parameter: 'model'.",
            Some("model"),
        ));
    }
    let mut dropped = Vec::new();
    let mut messages = Vec::new();
    if let Some(i) = req.instructions.as_deref().filter(|i| !i.is_empty()) {
        messages.push(ChatMessage {
            role: "system".into(),
            content: Some(Value::String(i.to_string())),
            ..Default::default()
        });
    }
    let mut state = Restored::default();
    match &req.input {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(ChatMessage {
            role: "user".into(),
            content: Some(Value::String(s.clone())),
            ..Default::default()
        }),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                decode_item(i, item, &mut messages, &mut state, sealer, &mut dropped)?;
            }
            state.apply_calls(&mut messages);
        }
        Some(_) => {
            return Err(DecodeError::new(
                "Invalid type for 'input': expected a string or an array of input items.",
                Some("input"),
            ))
        }
    }
    let mut hosted_tools = Vec::new();
    let mut custom_tools = Vec::new();
    let tools = match &req.tools {
        Some(t) => {
            let tools = decode_tools(t, &mut hosted_tools, &mut custom_tools)?;
            (!tools.is_empty()).then_some(tools)
        }
        None => None,
    };
    let mut extra = Map::new();
    let tool_choice = match &req.tool_choice {
        None => None,
        Some(Value::String(s)) => Some(Value::String(s.clone())),
        Some(tc) => match tc.get("type").and_then(Value::as_str) {
            Some("function" | "custom") => {
                let name = tc.get("name").and_then(Value::as_str).ok_or_else(|| {
                    DecodeError::new(
                        "Missing required parameter: 'tool_choice.name'.",
                        Some("tool_choice"),
                    )
                })?;
                Some(json!({"type": "function", "function": {"name": name}}))
            }
            Some("local_shell") => {
                Some(json!({"type": "function", "function": {"name": "local_shell"}}))
            }
            _ => {
                dropped.push("tool_choice".into());
                None
            }
        },
    };
    if let Some(format) = req.text.as_ref().and_then(|t| t.get("format")) {
        match format.get("type").and_then(Value::as_str) {
            Some("json_schema") => {
                let mut js = Map::new();
                for k in ["name", "schema", "strict", "description"] {
                    if let Some(v) = format.get(k) {
                        js.insert(k.into(), v.clone());
                    }
                }
                extra.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": js}),
                );
            }
            Some("json_object") => {
                extra.insert("response_format".into(), json!({"type": "json_object"}));
            }
            _ => {}
        }
    }
    if let Some(e) = req
        .reasoning
        .as_ref()
        .and_then(|r| r.get("effort"))
        .and_then(Value::as_str)
    {
        extra.insert("reasoning_effort".into(), Value::String(e.into()));
    }
    if let Some(p) = req.parallel_tool_calls {
        if tools.is_some() {
            extra.insert("parallel_tool_calls".into(), Value::Bool(p));
        }
    }
    if let Some(u) = &req.user {
        extra.insert("user".into(), Value::String(u.clone()));
    }
    if let Some(t) = &req.service_tier {
        extra.insert("service_tier".into(), Value::String(t.clone()));
    }
    if req.metadata.is_some() {
        dropped.push("metadata".into());
    }
    for k in req.extra.keys() {
        match k.as_str() {
            // Always what the gateway does: nothing to carry.
            "truncation" | "background" | "prompt_cache_key" | "safety_identifier" => {}
            _ => dropped.push(k.clone()),
        }
    }
    let stream = req.stream.unwrap_or(false);
    let encrypted_reasoning = req
        .include
        .iter()
        .flatten()
        .any(|i| i == "reasoning.encrypted_content");
    Ok(Decoded {
        chat: ChatCompletionRequest {
            model: req.model,
            messages,
            stream: stream.then_some(true),
            // The encoder needs the usage chunk for `response.completed`.
            stream_options: stream.then(|| StreamOptions {
                include_usage: Some(true),
                ..Default::default()
            }),
            tool_choice: tool_choice.filter(|_| tools.is_some()),
            tools,
            max_tokens: None,
            max_completion_tokens: req.max_output_tokens,
            temperature: req.temperature,
            top_p: req.top_p,
            stop: None,
            extra,
        },
        dropped,
        hosted_tools,
        custom_tools,
        store: req.store.unwrap_or(true),
        previous_response_id: req.previous_response_id,
        encrypted_reasoning,
        foreign_reasoning: state.foreign,
        native_only: state.native_only,
    })
}

/// Provider state unsealed from reasoning items, on its way back onto its turn.
#[derive(Default)]
struct Restored {
    /// Thinking blocks of a reasoning item that came before its turn's assistant message.
    pending_thinking: Option<Vec<Value>>,
    /// `extra_content` (Gemini signatures) by tool-call id.
    calls: HashMap<String, Value>,
    foreign: usize,
    /// Input only a Responses upstream can read (see [`Decoded::native_only`]).
    native_only: Vec<String>,
}

impl Restored {
    /// An assistant message starts: it takes the pending thinking blocks.
    fn on_assistant(&mut self, m: &mut ChatMessage) {
        if let Some(blocks) = self.pending_thinking.take() {
            m.extra
                .insert("thinking_blocks".into(), Value::Array(blocks));
        }
    }

    /// A reasoning item's state: thinking blocks go on the current assistant turn when the
    /// item follows it (a trailing state item), else on the next one.
    fn add(&mut self, s: TurnState, messages: &mut [ChatMessage]) {
        if !s.thinking_blocks.is_empty() {
            match messages.last_mut() {
                Some(m) if m.role == "assistant" && m.tool_call_id.is_none() => {
                    if !m.extra.contains_key("thinking_blocks") {
                        m.extra
                            .insert("thinking_blocks".into(), Value::Array(s.thinking_blocks));
                    }
                }
                _ => self.pending_thinking = Some(s.thinking_blocks),
            }
        }
        for (id, extra) in s.calls {
            if let Some(x) = extra {
                self.calls.insert(id, x);
            }
        }
    }

    /// Signatures back on their tool calls (the client's own `extra_content` wins).
    fn apply_calls(&mut self, messages: &mut [ChatMessage]) {
        if self.calls.is_empty() {
            return;
        }
        for m in messages.iter_mut().filter(|m| m.role == "assistant") {
            for c in m.tool_calls.iter_mut().flatten() {
                if let Some(x) = c.id.as_ref().and_then(|id| self.calls.remove(id)) {
                    c.extra.entry("extra_content").or_insert(x);
                }
            }
        }
    }
}

/// The wire form of sealed state: a turn's thinking blocks and its calls' `extra_content`.
fn state_json(s: &TurnState) -> Vec<u8> {
    let calls: Map<String, Value> = s
        .calls
        .iter()
        .filter_map(|(id, x)| Some((id.clone(), x.clone()?)))
        .collect();
    serde_json::to_vec(&json!({"thinking_blocks": s.thinking_blocks, "calls": calls}))
        .expect("serializes")
}

fn state_from_json(b: &[u8]) -> Option<TurnState> {
    let v: Value = serde_json::from_slice(b).ok()?;
    let thinking_blocks = v
        .get("thinking_blocks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let calls = v
        .get("calls")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, x)| (k.clone(), Some(x.clone())))
                .collect()
        })
        .unwrap_or_default();
    Some(TurnState {
        thinking_blocks,
        calls,
    })
}

/// Whether a turn has state a provider needs back.
fn has_state(s: &TurnState) -> bool {
    !s.thinking_blocks.is_empty() || s.calls.iter().any(|(_, x)| x.is_some())
}

fn item_type(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

/// The text of a content value: a string, or the text parts of an array.
fn content_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// An assistant message to put tool calls on: the last message if it is an assistant turn
/// (calls of one turn are consecutive items), else a new one.
fn assistant_for_calls<'m>(
    messages: &'m mut Vec<ChatMessage>,
    state: &mut Restored,
) -> &'m mut ChatMessage {
    let reuse = messages
        .last()
        .is_some_and(|m| m.role == "assistant" && m.tool_call_id.is_none());
    if !reuse {
        let mut m = ChatMessage {
            role: "assistant".into(),
            ..Default::default()
        };
        state.on_assistant(&mut m);
        messages.push(m);
    }
    messages.last_mut().expect("pushed")
}

fn decode_item(
    i: usize,
    item: &Value,
    messages: &mut Vec<ChatMessage>,
    state: &mut Restored,
    sealer: Option<&dyn Sealer>,
    dropped: &mut Vec<String>,
) -> Result<(), DecodeError> {
    let field = |f: &str| {
        item.get(f).and_then(Value::as_str).ok_or_else(|| {
            DecodeError::new(
                format!("Missing required parameter: 'input[{i}].{f}'."),
                Some("input"),
            )
        })
    };
    match item_type(item) {
        "message" | "" => {
            let role = field("role")?;
            let content = match role {
                "assistant" => Value::String(content_text(item.get("content"))),
                _ => input_content(i, item.get("content"), &mut state.native_only)?,
            };
            let mut m = ChatMessage {
                role: role.to_string(),
                content: Some(content),
                ..Default::default()
            };
            if role == "assistant" {
                state.on_assistant(&mut m);
            }
            messages.push(m);
        }
        "function_call" => {
            let call = ToolCall {
                id: Some(field("call_id")?.to_string()),
                kind: Some("function".into()),
                function: Some(FunctionCall {
                    name: Some(field("name")?.to_string()),
                    arguments: Some(
                        item.get("arguments")
                            .and_then(Value::as_str)
                            .unwrap_or("{}")
                            .to_string(),
                    ),
                }),
                ..Default::default()
            };
            assistant_for_calls(messages, state)
                .tool_calls
                .get_or_insert_with(Vec::new)
                .push(call);
        }
        "custom_tool_call" => {
            let input = item.get("input").and_then(Value::as_str).unwrap_or("");
            let call = ToolCall {
                id: Some(field("call_id")?.to_string()),
                kind: Some("function".into()),
                function: Some(FunctionCall {
                    name: Some(field("name")?.to_string()),
                    arguments: Some(json!({"input": input}).to_string()),
                }),
                ..Default::default()
            };
            assistant_for_calls(messages, state)
                .tool_calls
                .get_or_insert_with(Vec::new)
                .push(call);
        }
        "local_shell_call" => {
            let call_id = item
                .get("call_id")
                .or_else(|| item.get("id"))
                .and_then(Value::as_str)
                .unwrap_or("local_shell")
                .to_string();
            let action = item.get("action").cloned().unwrap_or_else(|| json!({}));
            let mut args = action.as_object().cloned().unwrap_or_default();
            args.remove("type");
            let call = ToolCall {
                id: Some(call_id),
                kind: Some("function".into()),
                function: Some(FunctionCall {
                    name: Some("local_shell".into()),
                    arguments: Some(Value::Object(args).to_string()),
                }),
                ..Default::default()
            };
            assistant_for_calls(messages, state)
                .tool_calls
                .get_or_insert_with(Vec::new)
                .push(call);
        }
        "function_call_output" | "custom_tool_call_output" | "local_shell_call_output" => {
            let id = item
                .get("call_id")
                .or_else(|| item.get("id"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    DecodeError::new(
                        format!("Missing required parameter: 'input[{i}].call_id'."),
                        Some("input"),
                    )
                })?;
            messages.push(ChatMessage {
                role: "tool".into(),
                content: Some(Value::String(content_text(item.get("output")))),
                tool_call_id: Some(id.to_string()),
                ..Default::default()
            });
        }
        "reasoning" => match item.get("encrypted_content").and_then(Value::as_str) {
            Some(e) if e.starts_with(SEAL_PREFIX) => {
                let refused = || {
                    DecodeError::new(
                        format!("input[{i}]: the encrypted_content of this reasoning item was not issued by this gateway or was altered"),
                        Some("input"),
                    )
                    .with_code("invalid_encrypted_content")
                };
                let plain = sealer.and_then(|s| s.open(e)).ok_or_else(refused)?;
                let s = state_from_json(&plain).ok_or_else(refused)?;
                state.add(s, messages);
            }
            Some(_) => state.foreign += 1,
            None => {}
        },
        "item_reference" => state.native_only.push(format!(
            "input[{i}]: item_reference needs the provider's own stored items (an OpenAI Responses provider); send the item itself"
        )),
        other => {
            let name = format!("input.{other}");
            if !dropped.contains(&name) {
                dropped.push(name);
            }
        }
    }
    Ok(())
}

/// A user, system or developer message's content: text, images and files as chat parts.
/// Parts only a Responses upstream can read (file ids, file URLs) are reported in
/// `native_only` and left out of the canonical request.
fn input_content(
    i: usize,
    content: Option<&Value>,
    native_only: &mut Vec<String>,
) -> Result<Value, DecodeError> {
    let parts = match content {
        Some(Value::String(s)) => return Ok(Value::String(s.clone())),
        Some(Value::Array(parts)) => parts,
        _ => return Ok(Value::String(String::new())),
    };
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        match item_type(p) {
            "input_text" | "output_text" | "text" => out.push(json!({
                "type": "text",
                "text": p.get("text").and_then(Value::as_str).unwrap_or(""),
            })),
            "input_image" => {
                let Some(url) = p.get("image_url").and_then(Value::as_str) else {
                    native_only.push(format!(
                        "input[{i}]: an input_image without image_url (a file id) needs OpenAI's file store"
                    ));
                    continue;
                };
                let mut image = json!({"url": url});
                if let Some(d) = p.get("detail") {
                    image["detail"] = d.clone();
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            "input_file" => {
                let Some(data) = p.get("file_data").and_then(Value::as_str) else {
                    native_only.push(format!(
                        "input[{i}]: an input_file without file_data (a file id or URL) needs OpenAI's file store"
                    ));
                    continue;
                };
                let mut file = json!({"file_data": data});
                if let Some(f) = p.get("filename") {
                    file["filename"] = f.clone();
                }
                out.push(json!({"type": "file", "file": file}));
            }
            other => native_only.push(format!(
                "input[{i}]: content type {other:?} is only read by an OpenAI Responses provider"
            )),
        }
    }
    Ok(Value::Array(out))
}

fn decode_tools(
    tools: &[Value],
    hosted: &mut Vec<String>,
    custom: &mut Vec<String>,
) -> Result<Vec<Tool>, DecodeError> {
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let name = || {
            t.get("name").and_then(Value::as_str).ok_or_else(|| {
                DecodeError::new(
                    format!("Missing required parameter: 'tools[{i}].name'."),
                    Some("tools"),
                )
            })
        };
        let def = match item_type(t) {
            "function" => {
                let mut extra = Map::new();
                if let Some(s) = t.get("strict") {
                    extra.insert("strict".into(), s.clone());
                }
                FunctionDef {
                    name: name()?.to_string(),
                    description: t
                        .get("description")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    parameters: t.get("parameters").cloned(),
                    extra,
                }
            }
            "custom" => {
                custom.push(name()?.to_string());
                FunctionDef {
                    name: name()?.to_string(),
                    description: t
                        .get("description")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    parameters: Some(custom_parameters()),
                    extra: Map::new(),
                }
            }
            "local_shell" => FunctionDef {
                name: "local_shell".into(),
                description: Some(
                    "Runs a shell command on the user's machine and returns its output.".into(),
                ),
                parameters: Some(local_shell_parameters()),
                extra: Map::new(),
            },
            other => {
                hosted.push(other.to_string());
                continue;
            }
        };
        out.push(Tool {
            kind: "function".into(),
            function: Some(def),
            extra: Map::new(),
        });
    }
    Ok(out)
}

// ---- answers ---------------------------------------------------------------------------------

/// What the response object says about the request and the gateway's ids.
#[derive(Debug, Clone, Default)]
pub struct ResponseMeta {
    /// `resp_...`, issued by the gateway.
    pub id: String,
    pub created_at: u64,
    /// Names of `custom` tools (their calls are `custom_tool_call` items).
    pub custom_tools: Vec<String>,
    pub previous_response_id: Option<String>,
    pub store: bool,
    /// Seals the provider's reasoning state into reasoning items' `encrypted_content`.
    pub sealer: Option<SealerRef>,
    /// The client asked for `reasoning.encrypted_content`; otherwise sealed state is kept only
    /// in the server's copy (see [`Encoded::document`]).
    pub show_encrypted: bool,
}

impl ResponseMeta {
    fn seal(&self, s: &TurnState) -> Option<String> {
        let sealer = self.sealer.as_ref()?;
        has_state(s).then(|| sealer.0.seal(&state_json(s)))
    }

    /// An item as the client sees it: sealed state only when asked for.
    fn client_item(&self, item: &Value) -> Value {
        let mut v = item.clone();
        if !self.show_encrypted {
            if let Value::Object(m) = &mut v {
                m.remove("encrypted_content");
            }
        }
        v
    }

    fn client_output(&self, output: &[Value]) -> Vec<Value> {
        output.iter().map(|i| self.client_item(i)).collect()
    }
}

/// A response object for the client, and the server's copy when it differs (sealed reasoning
/// state the client did not ask to see).
#[derive(Debug, Clone)]
pub struct Encoded {
    pub body: Vec<u8>,
    pub document: Option<Vec<u8>>,
}

/// Canonical usage as Responses usage.
fn responses_usage(u: Option<&Usage>) -> Value {
    let Some(u) = u else { return Value::Null };
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.prompt_tokens_details.as_ref().and_then(|d| d.cached_tokens).unwrap_or(0)},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.completion_tokens_details.as_ref().and_then(|d| d.reasoning_tokens).unwrap_or(0)},
        "total_tokens": u.total_tokens,
    })
}

/// `status` and `incomplete_details` for a chat `finish_reason`.
fn status_of(finish: Option<&str>) -> (&'static str, Value) {
    match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// A tool call as an output item: `custom_tool_call` for custom tools (their one string
/// argument as `input`), `local_shell_call` for Codex's shell, else `function_call`.
fn call_item(meta: &ResponseMeta, call_id: &str, name: &str, arguments: &str) -> Value {
    if meta.custom_tools.iter().any(|c| c == name) {
        let input = serde_json::from_str::<Value>(arguments)
            .ok()
            .and_then(|v| v.get("input").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| arguments.to_string());
        return json!({"type": "custom_tool_call", "id": format!("ctc_gw_{call_id}"), "call_id": call_id,
            "name": name, "input": input, "status": "completed"});
    }
    if name == "local_shell" {
        let mut action = serde_json::from_str::<Value>(arguments).unwrap_or_else(|_| json!({}));
        if let Value::Object(m) = &mut action {
            m.insert("type".into(), json!("exec"));
        }
        return json!({"type": "local_shell_call", "id": format!("lsh_gw_{call_id}"), "call_id": call_id,
            "action": action, "status": "completed"});
    }
    json!({"type": "function_call", "id": format!("fc_gw_{call_id}"), "call_id": call_id,
        "name": name, "arguments": arguments, "status": "completed"})
}

fn response_object(
    meta: &ResponseMeta,
    model: &str,
    status: &str,
    incomplete: Value,
    output: Vec<Value>,
    usage: Value,
    error: Value,
) -> Value {
    json!({
        "id": meta.id, "object": "response", "created_at": meta.created_at, "status": status,
        "error": error, "incomplete_details": incomplete, "model": model, "output": output,
        "parallel_tool_calls": true, "previous_response_id": meta.previous_response_id,
        "store": meta.store, "text": {"format": {"type": "text"}}, "tool_choice": "auto",
        "tools": [], "usage": usage, "metadata": {},
    })
}

/// Encodes a `chat.completion` as a `response` object.
pub fn encode_response(chat: &[u8], meta: &ResponseMeta) -> Result<Encoded, DecodeError> {
    let c: ChatCompletion = serde_json::from_slice(chat)
        .map_err(|e| DecodeError::new(format!("not a chat completion: {e}"), None))?;
    let mut output = Vec::new();
    let mut finish = None;
    let mut sealed = false;
    if let Some(choice) = c.choices.into_iter().next() {
        let m = choice.message;
        let state = TurnState {
            thinking_blocks: m
                .extra
                .get("thinking_blocks")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            calls: m
                .tool_calls
                .iter()
                .flatten()
                .filter_map(|c| Some((c.id.clone()?, c.extra.get("extra_content").cloned())))
                .collect(),
        };
        let summary: Vec<Value> = m
            .extra
            .get("reasoning_content")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
            .map(|r| json!({"type": "summary_text", "text": r}))
            .into_iter()
            .collect();
        let encrypted = meta.seal(&state);
        if !summary.is_empty() || encrypted.is_some() {
            let mut item =
                json!({"type": "reasoning", "id": format!("rs_{}", meta.id), "summary": summary});
            if let Some(e) = encrypted {
                item["encrypted_content"] = Value::String(e);
                sealed = true;
            }
            output.push(item);
        }
        let text = content_text(m.content.as_ref());
        if !text.is_empty() {
            output.push(json!({"type": "message", "id": format!("msg_{}", meta.id), "status": "completed",
                "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}));
        }
        for call in m.tool_calls.unwrap_or_default() {
            let f = call.function.unwrap_or_default();
            output.push(call_item(
                meta,
                call.id.as_deref().unwrap_or(""),
                f.name.as_deref().unwrap_or(""),
                f.arguments.as_deref().unwrap_or("{}"),
            ));
        }
        finish = choice.finish_reason;
    }
    let (status, incomplete) = status_of(finish.as_deref());
    let usage = responses_usage(c.usage.as_ref());
    let object = |output: Vec<Value>| {
        let v = response_object(
            meta,
            &c.model,
            status,
            incomplete.clone(),
            output,
            usage.clone(),
            Value::Null,
        );
        serde_json::to_vec(&v).expect("serializes")
    };
    if sealed && !meta.show_encrypted {
        let body = object(meta.client_output(&output));
        return Ok(Encoded {
            body,
            document: Some(object(output)),
        });
    }
    Ok(Encoded {
        body: object(output),
        document: None,
    })
}

/// Removes what only this gateway understands from a request relayed to an OpenAI Responses
/// upstream: reasoning items it sealed (another provider's state) or issued without a
/// provider's own `encrypted_content`, and the ids it gave items (unknown to that upstream).
pub fn strip_gateway_items(items: &mut Vec<Value>) {
    items.retain(|item| {
        if item_type(item) != "reasoning" {
            return true;
        }
        let ours_sealed = item
            .get("encrypted_content")
            .and_then(Value::as_str)
            .is_some_and(|e| e.starts_with(SEAL_PREFIX));
        let ours_id = item
            .get("id")
            .and_then(Value::as_str)
            .is_some_and(|i| i.contains(ID_MARKER));
        !(ours_sealed || ours_id)
    });
    for item in items.iter_mut() {
        if let Value::Object(m) = item {
            if m.get("id")
                .and_then(Value::as_str)
                .is_some_and(|i| i.contains(ID_MARKER))
            {
                m.remove("id");
            }
        }
    }
}

/// A Responses request rewritten for a relay to an OpenAI Responses upstream: the routed model,
/// an alias's defaults (where the client set none) and system prefix (before `instructions`).
/// Returns the body and whether it streams.
pub fn relay_body(
    body: &[u8],
    model: &str,
    defaults: &Map<String, Value>,
    system_prefix: Option<&str>,
) -> Result<(Vec<u8>, bool), DecodeError> {
    let mut obj = crate::json_object::RawObject::parse(body)
        .map_err(|e| DecodeError::new(format!("Invalid JSON: {e}"), None))?;
    obj.set("model", model);
    if let Ok(Some(Value::Array(mut items))) = obj.get_as::<Value>("input") {
        let before = items.len();
        let marked = obj
            .get("input")
            .is_some_and(|r| r.get().contains(ID_MARKER));
        if marked
            || obj
                .get("input")
                .is_some_and(|r| r.get().contains(SEAL_PREFIX))
        {
            strip_gateway_items(&mut items);
            let _ = before;
            obj.set("input", &items);
        }
    }
    for (k, v) in defaults {
        let key = match k.as_str() {
            "max_tokens" | "max_completion_tokens" => "max_output_tokens",
            k @ ("temperature" | "top_p" | "service_tier" | "metadata") => k,
            _ => continue,
        };
        if !obj.contains(key) {
            obj.set(key, v);
        }
    }
    if let Some(prefix) = system_prefix {
        let instructions = match obj.get_as::<String>("instructions") {
            Ok(Some(i)) if !i.is_empty() => format!("{prefix}\n\n{i}"),
            _ => prefix.to_string(),
        };
        obj.set("instructions", &instructions);
    }
    let stream = obj
        .get_as::<bool>("stream")
        .map_err(|_| DecodeError::new("stream: Input should be a valid boolean", Some("stream")))?
        .unwrap_or(false);
    Ok((obj.to_vec(), stream))
}

/// Usage of a Responses usage object in canonical terms.
fn usage_of(u: &Value) -> Option<Usage> {
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64);
    let input = n("/input_tokens")?;
    let output = n("/output_tokens").unwrap_or(0);
    let mut usage = Usage {
        prompt_tokens: input,
        completion_tokens: output,
        total_tokens: n("/total_tokens").unwrap_or(input + output),
        ..Default::default()
    };
    if let Some(c) = n("/input_tokens_details/cached_tokens") {
        usage.prompt_tokens_details = Some(crate::usage::PromptTokensDetails {
            cached_tokens: Some(c),
            ..Default::default()
        });
    }
    Some(usage)
}

/// Names of the tool calls among a response's output items.
fn tool_calls_of(output: Option<&Value>) -> Vec<String> {
    output
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter(|i| {
                    matches!(
                        item_type(i),
                        "function_call" | "custom_tool_call" | "local_shell_call"
                    )
                })
                .map(|i| {
                    i.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("local_shell")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Usage and tool-call names of a relayed `response` object.
pub fn usage_of_response(body: &[u8]) -> (Option<Usage>, Vec<String>) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return (None, Vec::new());
    };
    (
        v.get("usage").and_then(usage_of),
        tool_calls_of(v.get("output")),
    )
}

/// Watches a relayed Responses stream (passed unchanged): usage, tool calls, and the final
/// `response` object for the server's copy.
pub struct RelayObserver {
    decoder: SseDecoder,
    usage: Option<Usage>,
    stats: StreamStats,
    document: Option<Vec<u8>>,
    ended: bool,
    seq: u64,
}

impl RelayObserver {
    pub fn new(max_event_bytes: usize) -> Self {
        RelayObserver {
            decoder: SseDecoder::with_limit(max_event_bytes),
            usage: None,
            stats: StreamStats::default(),
            document: None,
            ended: false,
            seq: 0,
        }
    }

    fn observe(&mut self, data: &[u8]) {
        #[derive(Deserialize)]
        struct Ev<'a> {
            #[serde(rename = "type", default, borrow)]
            kind: std::borrow::Cow<'a, str>,
            #[serde(default)]
            sequence_number: Option<u64>,
            #[serde(default, borrow)]
            delta: Option<std::borrow::Cow<'a, str>>,
            #[serde(default)]
            item: Option<Value>,
            #[serde(default)]
            response: Option<Value>,
        }
        let Ok(ev) = serde_json::from_slice::<Ev<'_>>(data) else {
            return;
        };
        if let Some(n) = ev.sequence_number {
            self.seq = n + 1;
        }
        match ev.kind.as_ref() {
            "response.output_text.delta"
            | "response.reasoning_summary_text.delta"
            | "response.function_call_arguments.delta" => {
                self.stats.text_bytes += ev.delta.map_or(0, |d| d.len() as u64);
            }
            "response.output_item.added" => {
                if let Some(item) = &ev.item {
                    let names = tool_calls_of(Some(&Value::Array(vec![item.clone()])));
                    self.stats.tool_calls.extend(names);
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.ended = true;
                if let Some(r) = ev.response {
                    self.usage = r.get("usage").and_then(usage_of);
                    self.document = serde_json::to_vec(&r).ok();
                }
            }
            "error" => self.ended = true,
            _ => {}
        }
    }
}

impl crate::dialects::StreamTranslator for RelayObserver {
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), crate::sse::EventTooLarge> {
        out.extend_from_slice(chunk);
        self.decoder.push(chunk)?;
        while let Some(ev) = self.decoder.next_event() {
            if let Some(data) = ev.data {
                self.observe(&data);
            }
        }
        Ok(())
    }

    fn finish(&mut self, end: crate::stream_relay::StreamEnd, out: &mut BytesMut) {
        // A stream cut before its last event gets OpenAI's `error` event.
        if self.ended {
            return;
        }
        let (message, code) = match end {
            crate::stream_relay::StreamEnd::Failed { message, code } => (message, code),
            crate::stream_relay::StreamEnd::Clean => (
                "the provider's stream ended before response.completed".to_string(),
                "upstream_stream_error",
            ),
        };
        let ev = json!({"type": "error", "code": code, "message": message,
            "param": null, "sequence_number": self.seq});
        encode_named("error", ev.to_string().as_bytes(), out);
        self.ended = true;
    }

    fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref()
    }

    fn stats(&self) -> &StreamStats {
        &self.stats
    }

    fn document(&mut self) -> Option<Vec<u8>> {
        self.document.take()
    }
}

/// The output item being streamed.
enum Open {
    Reasoning {
        text: String,
    },
    Message {
        text: String,
    },
    Call {
        index: u32,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Which delta event.
#[derive(Clone, Copy)]
enum Delta<'a> {
    Text,
    Reasoning,
    /// A function call's arguments, with its item id.
    Arguments(&'a str),
}

/// Encodes a canonical chunk stream as the Responses event sequence.
pub struct ResponsesEncoder {
    meta: ResponseMeta,
    decoder: SseDecoder,
    model: String,
    seq: u64,
    started: bool,
    finished: bool,
    open: Option<Open>,
    /// Completed output items, for `response.completed`.
    output: Vec<Value>,
    finish: Option<String>,
    usage: Option<Usage>,
    /// Provider state seen in the stream, sealed into a reasoning item.
    thinking: Vec<Value>,
    call_state: Vec<(String, Option<Value>)>,
    /// The final response object (the server's copy).
    document: Option<Vec<u8>>,
}

impl ResponsesEncoder {
    pub fn new(meta: ResponseMeta, model: &str) -> Self {
        ResponsesEncoder {
            meta,
            decoder: SseDecoder::new(),
            model: model.to_string(),
            seq: 0,
            started: false,
            finished: false,
            open: None,
            output: Vec::new(),
            finish: None,
            usage: None,
            thinking: Vec::new(),
            call_state: Vec::new(),
            document: None,
        }
    }

    fn event(&mut self, name: &str, mut v: Value, out: &mut BytesMut) {
        v["type"] = Value::String(name.to_string());
        v["sequence_number"] = Value::from(self.seq);
        self.seq += 1;
        encode_named(name, v.to_string().as_bytes(), out);
    }

    /// The response as the client sees it, and (after the last event) the server's copy.
    fn snapshot(&mut self, status: &str, incomplete: Value, usage: Value, error: Value) -> Value {
        let last = status != "in_progress";
        let client = response_object(
            &self.meta,
            &self.model,
            status,
            incomplete.clone(),
            self.meta.client_output(&self.output),
            usage.clone(),
            error.clone(),
        );
        if last {
            let doc = response_object(
                &self.meta,
                &self.model,
                status,
                incomplete,
                self.output.clone(),
                usage,
                error,
            );
            self.document = serde_json::to_vec(&doc).ok();
        }
        client
    }

    /// Sealed state for an item, when there is any (`calls`: with the calls' signatures).
    fn take_sealed(&mut self, calls: bool) -> Option<String> {
        let state = TurnState {
            thinking_blocks: std::mem::take(&mut self.thinking),
            calls: if calls {
                std::mem::take(&mut self.call_state)
            } else {
                Vec::new()
            },
        };
        // Nothing sealed (no sealer or no state): what was taken is not needed again.
        self.meta.seal(&state)
    }

    /// The provider state left at the end (Gemini signatures, thinking without a summary):
    /// a reasoning item of its own after the turn's items.
    fn trailing_state(&mut self, out: &mut BytesMut) {
        if self.meta.sealer.is_none() || (self.thinking.is_empty() && self.call_state.is_empty()) {
            return;
        }
        let Some(sealed) = self.take_sealed(true) else {
            return;
        };
        let id = self.item_id("rs");
        let index = self.output.len();
        let item =
            json!({"type": "reasoning", "id": id, "summary": [], "encrypted_content": sealed});
        let shown = self.meta.client_item(&item);
        let mut added = shown.clone();
        if let Value::Object(m) = &mut added {
            m.remove("encrypted_content");
        }
        self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": added}),
            out,
        );
        self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": shown}),
            out,
        );
        self.output.push(item);
    }

    fn start(&mut self, model: &str, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        if !model.is_empty() {
            self.model = model.to_string();
        }
        let r = self.snapshot("in_progress", Value::Null, Value::Null, Value::Null);
        self.event("response.created", json!({"response": r}), out);
        self.event("response.in_progress", json!({"response": r}), out);
    }

    fn item_id(&self, prefix: &str) -> String {
        format!("{prefix}_{}_{}", self.meta.id, self.output.len())
    }

    fn open_reasoning(&mut self, out: &mut BytesMut) {
        if matches!(self.open, Some(Open::Reasoning { .. })) {
            return;
        }
        self.close(out);
        let id = self.item_id("rs");
        let index = self.output.len();
        self.event(
            "response.output_item.added",
            json!({"output_index": index,
            "item": {"type": "reasoning", "id": id, "summary": []}}),
            out,
        );
        self.event(
            "response.reasoning_summary_part.added",
            json!({"item_id": id, "output_index": index,
            "summary_index": 0, "part": {"type": "summary_text", "text": ""}}),
            out,
        );
        self.open = Some(Open::Reasoning {
            text: String::new(),
        });
    }

    fn open_message(&mut self, out: &mut BytesMut) {
        if matches!(self.open, Some(Open::Message { .. })) {
            return;
        }
        self.close(out);
        let id = self.item_id("msg");
        let index = self.output.len();
        self.event("response.output_item.added", json!({"output_index": index,
            "item": {"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []}}), out);
        self.event(
            "response.content_part.added",
            json!({"item_id": id, "output_index": index,
            "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
            out,
        );
        self.open = Some(Open::Message {
            text: String::new(),
        });
    }

    /// Ends the open item with its `.done` events and keeps it for `response.completed`.
    fn close(&mut self, out: &mut BytesMut) {
        let Some(open) = self.open.take() else { return };
        let index = self.output.len();
        match open {
            Open::Reasoning { text } => {
                let id = self.item_id("rs");
                self.event(
                    "response.reasoning_summary_text.done",
                    json!({"item_id": id, "output_index": index,
                    "summary_index": 0, "text": text}),
                    out,
                );
                self.event(
                    "response.reasoning_summary_part.done",
                    json!({"item_id": id, "output_index": index,
                    "summary_index": 0, "part": {"type": "summary_text", "text": text}}),
                    out,
                );
                let mut item = json!({"type": "reasoning", "id": id, "summary": [{"type": "summary_text", "text": text}]});
                if let Some(sealed) = self.take_sealed(false) {
                    item["encrypted_content"] = Value::String(sealed);
                }
                let shown = self.meta.client_item(&item);
                self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": shown}),
                    out,
                );
                self.output.push(item);
            }
            Open::Message { text } => {
                let id = self.item_id("msg");
                let part = json!({"type": "output_text", "text": text, "annotations": []});
                self.event(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index,
                    "content_index": 0, "text": text}),
                    out,
                );
                self.event(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index,
                    "content_index": 0, "part": part}),
                    out,
                );
                let item = json!({"type": "message", "id": id, "status": "completed", "role": "assistant", "content": [part]});
                self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                    out,
                );
                self.output.push(item);
            }
            Open::Call {
                call_id,
                name,
                arguments,
                ..
            } => {
                let item = call_item(&self.meta, &call_id, &name, &arguments);
                let id = item["id"].clone();
                match item_type(&item) {
                    "custom_tool_call" => {
                        // A custom tool's input is known once its arguments are complete.
                        let input = item["input"].clone();
                        self.event(
                            "response.custom_tool_call_input.delta",
                            json!({"item_id": id,
                            "output_index": index, "delta": input}),
                            out,
                        );
                        self.event(
                            "response.custom_tool_call_input.done",
                            json!({"item_id": id,
                            "output_index": index, "input": input}),
                            out,
                        );
                    }
                    "function_call" => {
                        self.event(
                            "response.function_call_arguments.done",
                            json!({"item_id": id,
                            "output_index": index, "arguments": arguments}),
                            out,
                        );
                    }
                    _ => {}
                }
                self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                    out,
                );
                self.output.push(item);
            }
        }
    }

    /// A delta event, written straight into `out` (the per-token path builds no JSON tree),
    /// its keys in the order the other events have them (sorted).
    fn delta(&mut self, kind: Delta<'_>, delta: &str, out: &mut BytesMut) {
        use bytes::BufMut;
        use std::fmt::Write as _;
        let index = self.output.len();
        let name = match kind {
            Delta::Text => "response.output_text.delta",
            Delta::Reasoning => "response.reasoning_summary_text.delta",
            Delta::Arguments(_) => "response.function_call_arguments.delta",
        };
        out.reserve(160 + delta.len());
        let _ = write!(out, "event: {name}\ndata: {{");
        if let Delta::Text = kind {
            out.extend_from_slice(b"\"content_index\":0,");
        }
        out.extend_from_slice(b"\"delta\":");
        let _ = serde_json::to_writer(out.writer(), delta);
        out.extend_from_slice(b",\"item_id\":");
        match kind {
            // The gateway's own ids: ASCII letters, digits and `_`.
            Delta::Text => {
                let _ = write!(out, "\"msg_{}_{index}\"", self.meta.id);
            }
            Delta::Reasoning => {
                let _ = write!(out, "\"rs_{}_{index}\"", self.meta.id);
            }
            Delta::Arguments(id) => {
                let _ = serde_json::to_writer(out.writer(), id);
            }
        }
        let _ = write!(
            out,
            ",\"output_index\":{index},\"sequence_number\":{}",
            self.seq
        );
        self.seq += 1;
        if let Delta::Reasoning = kind {
            out.extend_from_slice(b",\"summary_index\":0");
        }
        let _ = write!(out, ",\"type\":\"{name}\"}}\n\n");
    }

    fn chunk(&mut self, c: LeanChunk<'_>, out: &mut BytesMut) {
        self.start(&c.model, out);
        if let Some(u) = c.usage {
            self.usage = Some(u);
        }
        let Some(choice) = c.choices.into_iter().next() else {
            return;
        };
        let d = choice.delta;
        if let Some(blocks) = d.thinking_blocks {
            self.thinking.extend(blocks);
        }
        if let Some(r) = d.reasoning_content.as_deref().filter(|r| !r.is_empty()) {
            self.open_reasoning(out);
            if let Some(Open::Reasoning { text }) = &mut self.open {
                text.push_str(r);
            }
            self.delta(Delta::Reasoning, r, out);
        }
        if let Some(t) = d.content.as_deref().filter(|t| !t.is_empty()) {
            self.open_message(out);
            if let Some(Open::Message { text }) = &mut self.open {
                text.push_str(t);
            }
            self.delta(Delta::Text, t, out);
        }
        for call in d.tool_calls.unwrap_or_default() {
            let index = call.index.unwrap_or(0);
            if let Some(x) = call.extra.get("extra_content") {
                let id = call.id.clone().or_else(|| match &self.open {
                    Some(Open::Call { call_id, .. }) => Some(call_id.clone()),
                    _ => None,
                });
                if let Some(id) = id {
                    self.call_state.push((id, Some(x.clone())));
                }
            }
            let f = call.function.unwrap_or_default();
            let same = matches!(&self.open, Some(Open::Call { index: i, .. }) if *i == index);
            if !same {
                self.close(out);
                let call_id = call.id.clone().unwrap_or_else(|| format!("call_{index}"));
                let name = f.name.clone().unwrap_or_default();
                let item = call_item(&self.meta, &call_id, &name, "");
                let mut added = item.clone();
                added["status"] = json!("in_progress");
                self.event(
                    "response.output_item.added",
                    json!({"output_index": self.output.len(), "item": added}),
                    out,
                );
                self.open = Some(Open::Call {
                    index,
                    call_id,
                    name,
                    arguments: String::new(),
                });
            }
            if let Some(args) = f.arguments.as_deref().filter(|a| !a.is_empty()) {
                let mut streamed = None;
                if let Some(Open::Call {
                    arguments,
                    call_id,
                    name,
                    ..
                }) = &mut self.open
                {
                    arguments.push_str(args);
                    if !self.meta.custom_tools.iter().any(|c| c == name) && name != "local_shell" {
                        streamed = Some(format!("fc_gw_{call_id}"));
                    }
                }
                if let Some(id) = streamed {
                    self.delta(Delta::Arguments(&id), args, out);
                }
            }
        }
        if let Some(f) = choice.finish_reason {
            self.close(out);
            self.finish = Some(f);
        }
    }

    fn done(&mut self, out: &mut BytesMut) {
        if self.finished {
            return;
        }
        self.finished = true;
        let model = self.model.clone();
        self.start(&model, out);
        self.close(out);
        self.trailing_state(out);
        let (status, incomplete) = status_of(self.finish.as_deref());
        let usage = responses_usage(self.usage.as_ref());
        let r = self.snapshot(status, incomplete, usage, Value::Null);
        let name = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.event(name, json!({"response": r}), out);
    }

    fn fail(&mut self, message: &str, code: Option<&str>, out: &mut BytesMut) {
        let model = self.model.clone();
        self.start(&model, out);
        let error = json!({"code": code.unwrap_or("server_error"), "message": message});
        let usage = responses_usage(self.usage.as_ref());
        let r = self.snapshot("failed", Value::Null, usage, error);
        self.event("response.failed", json!({"response": r}), out);
        self.finished = true;
    }
}

impl StreamEncoder for ResponsesEncoder {
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
                Canonical::Error { message, code } => self.fail(&message, code.as_deref(), out),
                Canonical::Chunk(c) => self.chunk(c, out),
                Canonical::Skip => {}
            }
        }
    }

    fn keepalive(&self, out: &mut BytesMut) {
        out.extend_from_slice(b": keep-alive\n\n");
    }

    fn document(&mut self) -> Option<Vec<u8>> {
        self.document.take()
    }
}
