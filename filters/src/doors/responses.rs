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
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{DecodeError, LeanChunk, StreamEncoder};
use crate::openai::{
    ChatCompletion, ChatCompletionRequest, ChatMessage, FunctionCall, FunctionDef, StreamOptions,
    Tool, ToolCall,
};
use crate::sse::{encode_named, SseDecoder};
use crate::usage::Usage;

/// A `POST /v1/responses` body. Fields the gateway does not name are kept in `extra`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResponsesRequest {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub input: Option<Value>,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub text: Option<Value>,
    #[serde(default)]
    pub reasoning: Option<Value>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub include: Option<Vec<String>>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub service_tier: Option<String>,
    #[serde(default)]
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
    /// `encrypted_content` of the reasoning items in the input, in order, for the server to
    /// unseal.
    pub sealed_reasoning: Vec<String>,
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

/// Decodes a Responses request into the canonical Chat Completions request.
pub fn decode_request(body: &[u8]) -> Result<Decoded, DecodeError> {
    let req: ResponsesRequest = serde_json::from_slice(body)
        .map_err(|e| DecodeError::new(format!("Invalid Responses request: {e}"), None))?;
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
    let mut sealed_reasoning = Vec::new();
    match &req.input {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(ChatMessage {
            role: "user".into(),
            content: Some(Value::String(s.clone())),
            ..Default::default()
        }),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                decode_item(i, item, &mut messages, &mut sealed_reasoning, &mut dropped)?;
            }
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
        sealed_reasoning,
    })
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
fn assistant_for_calls(messages: &mut Vec<ChatMessage>) -> &mut ChatMessage {
    let reuse = messages
        .last()
        .is_some_and(|m| m.role == "assistant" && m.tool_call_id.is_none());
    if !reuse {
        messages.push(ChatMessage {
            role: "assistant".into(),
            ..Default::default()
        });
    }
    messages.last_mut().expect("pushed")
}

fn decode_item(
    i: usize,
    item: &Value,
    messages: &mut Vec<ChatMessage>,
    sealed: &mut Vec<String>,
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
                _ => input_content(i, item.get("content"))?,
            };
            messages.push(ChatMessage {
                role: role.to_string(),
                content: Some(content),
                ..Default::default()
            });
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
            assistant_for_calls(messages)
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
            assistant_for_calls(messages)
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
            assistant_for_calls(messages)
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
        "reasoning" => {
            if let Some(e) = item.get("encrypted_content").and_then(Value::as_str) {
                sealed.push(e.to_string());
            }
        }
        "item_reference" => {
            return Err(DecodeError::new(
                format!("input[{i}]: item_reference needs a stored response; send the item itself"),
                Some("input"),
            ))
        }
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
fn input_content(i: usize, content: Option<&Value>) -> Result<Value, DecodeError> {
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
                let url = p.get("image_url").and_then(Value::as_str).ok_or_else(|| {
                    DecodeError::new(
                        format!("input[{i}]: input_image needs image_url (file ids need OpenAI's file store)"),
                        Some("input"),
                    )
                })?;
                let mut image = json!({"url": url});
                if let Some(d) = p.get("detail") {
                    image["detail"] = d.clone();
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            "input_file" => {
                let data = p.get("file_data").and_then(Value::as_str).ok_or_else(|| {
                    DecodeError::new(
                        format!("input[{i}]: input_file needs file_data (file ids and URLs need OpenAI's file store)"),
                        Some("input"),
                    )
                })?;
                let mut file = json!({"file_data": data});
                if let Some(f) = p.get("filename") {
                    file["filename"] = f.clone();
                }
                out.push(json!({"type": "file", "file": file}));
            }
            other => {
                return Err(DecodeError::new(
                    format!("input[{i}]: content type {other:?} is not supported"),
                    Some("input"),
                ))
            }
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
        return json!({"type": "custom_tool_call", "id": format!("ctc_{call_id}"), "call_id": call_id,
            "name": name, "input": input, "status": "completed"});
    }
    if name == "local_shell" {
        let mut action = serde_json::from_str::<Value>(arguments).unwrap_or_else(|_| json!({}));
        if let Value::Object(m) = &mut action {
            m.insert("type".into(), json!("exec"));
        }
        return json!({"type": "local_shell_call", "id": format!("lsh_{call_id}"), "call_id": call_id,
            "action": action, "status": "completed"});
    }
    json!({"type": "function_call", "id": format!("fc_{call_id}"), "call_id": call_id,
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
pub fn encode_response(chat: &[u8], meta: &ResponseMeta) -> Result<Vec<u8>, DecodeError> {
    let c: ChatCompletion = serde_json::from_slice(chat)
        .map_err(|e| DecodeError::new(format!("not a chat completion: {e}"), None))?;
    let mut output = Vec::new();
    let mut finish = None;
    if let Some(choice) = c.choices.into_iter().next() {
        let m = choice.message;
        if let Some(r) = m
            .extra
            .get("reasoning_content")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
        {
            output.push(json!({"type": "reasoning", "id": format!("rs_{}", meta.id),
                "summary": [{"type": "summary_text", "text": r}]}));
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
    let v = response_object(
        meta,
        &c.model,
        status,
        incomplete,
        output,
        responses_usage(c.usage.as_ref()),
        Value::Null,
    );
    Ok(serde_json::to_vec(&v).expect("serializes"))
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
        }
    }

    fn event(&mut self, name: &str, mut v: Value, out: &mut BytesMut) {
        v["type"] = Value::String(name.to_string());
        v["sequence_number"] = Value::from(self.seq);
        self.seq += 1;
        encode_named(name, v.to_string().as_bytes(), out);
    }

    fn snapshot(&self, status: &str, incomplete: Value, usage: Value, error: Value) -> Value {
        response_object(
            &self.meta,
            &self.model,
            status,
            incomplete,
            self.output.clone(),
            usage,
            error,
        )
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
                let item = json!({"type": "reasoning", "id": id, "summary": [{"type": "summary_text", "text": text}]});
                self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
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

    fn chunk(&mut self, c: LeanChunk<'_>, out: &mut BytesMut) {
        self.start(&c.model, out);
        if let Some(u) = c.usage {
            self.usage = Some(u);
        }
        let Some(choice) = c.choices.into_iter().next() else {
            return;
        };
        let d = choice.delta;
        if let Some(r) = d.reasoning_content.as_deref().filter(|r| !r.is_empty()) {
            self.open_reasoning(out);
            let (id, index) = (self.item_id("rs"), self.output.len());
            if let Some(Open::Reasoning { text }) = &mut self.open {
                text.push_str(r);
            }
            self.event(
                "response.reasoning_summary_text.delta",
                json!({"item_id": id,
                "output_index": index, "summary_index": 0, "delta": r}),
                out,
            );
        }
        if let Some(t) = d.content.as_deref().filter(|t| !t.is_empty()) {
            self.open_message(out);
            let (id, index) = (self.item_id("msg"), self.output.len());
            if let Some(Open::Message { text }) = &mut self.open {
                text.push_str(t);
            }
            self.event(
                "response.output_text.delta",
                json!({"item_id": id, "output_index": index,
                "content_index": 0, "delta": t}),
                out,
            );
        }
        for call in d.tool_calls.unwrap_or_default() {
            let index = call.index.unwrap_or(0);
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
                let output_index = self.output.len();
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
                        streamed = Some(format!("fc_{call_id}"));
                    }
                }
                if let Some(id) = streamed {
                    self.event(
                        "response.function_call_arguments.delta",
                        json!({"item_id": id,
                        "output_index": output_index, "delta": args}),
                        out,
                    );
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
            let Some(data) = ev.data.as_deref() else {
                self.keepalive(out);
                continue;
            };
            if ev.is_done() {
                self.done(out);
                continue;
            }
            let Ok(c) = serde_json::from_slice::<LeanChunk<'_>>(data) else {
                continue;
            };
            if let Some(e) = &c.error {
                let message = e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("error")
                    .to_string();
                let code = e.get("code").and_then(Value::as_str).map(str::to_string);
                self.fail(&message, code.as_deref(), out);
                continue;
            }
            self.chunk(c, out);
        }
    }

    fn keepalive(&self, out: &mut BytesMut) {
        out.extend_from_slice(b": keep-alive\n\n");
    }
}
