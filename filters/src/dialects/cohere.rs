//! Cohere v2 chat (`POST /v2/chat`, Bearer).

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::chunks::ChunkWriter;
use super::native_stream_parts;
use super::{
    content_text, finish_dropped, image_url, stop_list, NativeEvents, NativeRequest,
    OpenAiResponse, RequestOptions, TranslateError,
};
use crate::openai::{
    ChatCompletion, ChatCompletionRequest, ChatMessage, Choice, FunctionCall, ToolCall,
};
use crate::sse::{SseDecoder, SseEvent};
use crate::usage::Usage;

/// Native fields passed through unchanged.
const NATIVE_PASSTHROUGH: &[&str] = &[
    "k",
    "documents",
    "citation_options",
    "safety_mode",
    "thinking",
    "priority",
];
const CONSUMED: &[&str] = &[
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "response_format",
    "top_k",
    "stream_options",
    "n",
];

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<String>>,
    #[serde(flatten)]
    native: Map<String, Value>,
}

pub fn translate_request(
    req: &ChatCompletionRequest,
    _opts: &RequestOptions,
) -> Result<NativeRequest, TranslateError> {
    let mut dropped = super::non_function_tools(req);
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let msg = match m.role.as_str() {
            "system" | "developer" => {
                json!({"role": "system", "content": content_text(m.content.as_ref())})
            }
            "user" => json!({"role": "user", "content": user_content(m.content.as_ref(), i)?}),
            "assistant" => {
                let mut a = json!({"role": "assistant"});
                let t = content_text(m.content.as_ref());
                let calls = m.tool_calls.as_ref().filter(|c| !c.is_empty());
                if !t.is_empty() && calls.is_none() {
                    a["content"] = Value::String(t.clone());
                }
                if let Some(calls) = calls {
                    let calls: Vec<Value> = calls
                        .iter()
                        .enumerate()
                        .map(|(k, tc)| {
                            let f = tc.function.as_ref();
                            // Cohere refuses `id: null`; a tool message can only name a real id.
                            let id = tc.id.clone().unwrap_or_else(|| format!("call_{i}_{k}"));
                            json!({"id": id, "type": "function", "function": {
                                "name": f.and_then(|f| f.name.clone()).unwrap_or_default(),
                                "arguments": f.and_then(|f| f.arguments.clone()).unwrap_or_else(|| "{}".into()),
                            }})
                        })
                        .collect();
                    a["tool_calls"] = Value::Array(calls);
                    // Cohere refuses text beside tool calls: text another provider wrote next
                    // to its calls ("Let me check...") is the plan.
                    if let Some(plan) = m.extra.get("tool_plan") {
                        a["tool_plan"] = plan.clone();
                    } else if !t.is_empty() {
                        a["tool_plan"] = Value::String(t);
                    }
                }
                a
            }
            "tool" | "function" => {
                let id = m.tool_call_id.clone().ok_or_else(|| {
                    TranslateError::new(
                        format!("messages[{i}]: tool message without tool_call_id"),
                        Some("messages"),
                    )
                })?;
                json!({"role": "tool", "tool_call_id": id, "content": content_text(m.content.as_ref())})
            }
            other => {
                return Err(TranslateError::new(
                    format!("messages[{i}]: unsupported role {other:?}"),
                    Some("messages"),
                ))
            }
        };
        messages.push(msg);
    }
    let tools = req.tools.as_ref().map(|tools| {
        tools
            .iter()
            .filter_map(|t| t.function.as_ref())
            .map(|f| {
                let mut func = json!({"name": f.name, "parameters": f.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}}))});
                if let Some(d) = &f.description {
                    func["description"] = Value::String(d.clone());
                }
                json!({"type": "function", "function": func})
            })
            .collect::<Vec<_>>()
    });
    let mut tools = tools;
    let tool_choice = match &req.tool_choice {
        None => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => None,
            "none" => Some("NONE"),
            "required" => Some("REQUIRED"),
            other => {
                return Err(TranslateError::new(
                    format!("unsupported tool_choice {other:?}"),
                    Some("tool_choice"),
                ))
            }
        },
        Some(v) => {
            // Cohere cannot force one named tool: offer only that tool and require a call.
            let name = v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    TranslateError::new(
                        "tool_choice object needs function.name",
                        Some("tool_choice"),
                    )
                })?;
            if let Some(t) = &mut tools {
                t.retain(|tool| {
                    tool.pointer("/function/name").and_then(Value::as_str) == Some(name)
                });
            }
            Some("REQUIRED")
        }
    };
    let mut native = Map::new();
    let x = &req.extra;
    if let Some(v) = x.get("seed") {
        native.insert("seed".into(), v.clone());
    }
    // Cohere takes penalties in 0-1 (OpenAI: -2 to 2): clamped, and named when changed.
    for k in ["frequency_penalty", "presence_penalty"] {
        if let Some(v) = x.get(k).and_then(Value::as_f64) {
            let c = v.clamp(0.0, 1.0);
            if c != v {
                dropped.push(k.to_string());
            }
            native.insert(k.into(), json!(c));
        }
    }
    // `p` must be within 0.01-0.99: `top_p: 1` (a common client default) is sent as 0.99.
    let p = req.top_p.map(|v| {
        let c = v.clamp(0.01, 0.99);
        if c != v {
            dropped.push("top_p".into());
        }
        c
    });
    if let Some(v) = x.get("top_k") {
        native.insert("k".into(), v.clone());
    }
    match x.get("response_format") {
        Some(rf) if rf["type"] == "json_object" => {
            native.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(rf) if rf["type"] == "json_schema" => {
            let schema = rf
                .pointer("/json_schema/schema")
                .cloned()
                .unwrap_or(Value::Null);
            native.insert(
                "response_format".into(),
                json!({"type": "json_object", "json_schema": schema}),
            );
        }
        Some(_) | None => {}
    }
    for (k, v) in x {
        if k == "thinking" {
            // Anthropic-style `budget_tokens` is Cohere's `token_budget`.
            let mut t = v.clone();
            if let Some(obj) = t.as_object_mut() {
                if let Some(b) = obj.remove("budget_tokens") {
                    obj.entry("token_budget").or_insert(b);
                }
            }
            native.insert(k.clone(), t);
        } else if NATIVE_PASSTHROUGH.contains(&k.as_str()) {
            native.insert(k.clone(), v.clone());
        } else if (k == "n" && v.as_u64().is_some_and(|n| n > 1)) || !CONSUMED.contains(&k.as_str())
        {
            dropped.push(k.clone());
        }
    }
    let body = ChatRequest {
        model: &req.model,
        messages,
        tools,
        tool_choice,
        stream: req.stream.filter(|s| *s),
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        p,
        stop_sequences: stop_list(req.stop.as_ref()),
        native,
    };
    Ok(NativeRequest {
        body: serde_json::to_vec(&body).expect("request serializes"),
        stream: req.stream.unwrap_or(false),
        dropped: finish_dropped(dropped),
        json_tool: None,
    })
}

fn user_content(content: Option<&Value>, i: usize) -> Result<Value, TranslateError> {
    let Some(Value::Array(parts)) = content else {
        return Ok(Value::String(content_text(content)));
    };
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        match p.get("type").and_then(Value::as_str) {
            Some("text") => {
                // No empty text parts.
                let t = p.get("text").and_then(Value::as_str).unwrap_or("");
                if !t.is_empty() {
                    out.push(json!({"type": "text", "text": t}));
                }
            }
            Some("image_url") => {
                let url = image_url(p).ok_or_else(|| {
                    TranslateError::new(
                        format!("messages[{i}]: image_url part without url"),
                        Some("messages"),
                    )
                })?;
                out.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            other => {
                return Err(TranslateError::new(
                    format!(
                        "messages[{i}]: content part type {other:?} is not supported by Cohere"
                    ),
                    Some("messages"),
                ))
            }
        }
    }
    Ok(Value::Array(out))
}

// ---- responses -------------------------------------------------------------------------------

#[derive(Deserialize, Default, Clone)]
struct Tokens {
    #[serde(default)]
    input_tokens: Option<f64>,
    #[serde(default)]
    output_tokens: Option<f64>,
}

#[derive(Deserialize, Default, Clone)]
struct NativeUsage {
    /// Kept as sent, and passed on under `usage.billed_units`.
    #[serde(default)]
    billed_units: Option<Value>,
    #[serde(default)]
    tokens: Option<Tokens>,
}

impl NativeUsage {
    /// `billed_units` is what Cohere charges (its `tokens` also count the prompt template
    /// the model processed): usage, cost and limits follow the bill, `tokens` when there is
    /// none. Both stay in the usage as reported.
    fn to_openai(&self) -> Usage {
        let billed = self
            .billed_units
            .as_ref()
            .and_then(|b| serde_json::from_value::<Tokens>(b.clone()).ok())
            .filter(|b| b.input_tokens.is_some() || b.output_tokens.is_some());
        let t = billed.or_else(|| self.tokens.clone()).unwrap_or_default();
        let prompt = t.input_tokens.unwrap_or(0.0) as u64;
        let completion = t.output_tokens.unwrap_or(0.0) as u64;
        let mut extra = Map::new();
        if let Some(b) = &self.billed_units {
            extra.insert("billed_units".into(), b.clone());
        }
        if let Some(t) = &self.tokens {
            let n = |x: Option<f64>| x.map(|v| v as u64);
            extra.insert(
                "tokens".into(),
                json!({"input_tokens": n(t.input_tokens), "output_tokens": n(t.output_tokens)}),
            );
        }
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            extra,
            ..Default::default()
        }
    }
}

#[derive(Deserialize)]
struct NativeToolCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<NativeFunction>,
}

#[derive(Deserialize, Default)]
struct NativeFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize, Default)]
struct NativeMessage {
    #[serde(default)]
    content: Vec<ContentItem>,
    #[serde(default)]
    tool_calls: Vec<NativeToolCall>,
    #[serde(default)]
    tool_plan: Option<String>,
}

#[derive(Deserialize)]
struct ContentItem {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
}

#[derive(Deserialize)]
struct ChatResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
    /// Required: a body without it is not a v2 chat response.
    message: NativeMessage,
    #[serde(default)]
    usage: Option<NativeUsage>,
}

pub fn finish_reason(reason: Option<&str>) -> &'static str {
    match reason {
        Some("MAX_TOKENS") => "length",
        Some("TOOL_CALL") => "tool_calls",
        _ => "stop", // COMPLETE, STOP_SEQUENCE (ERROR and TIMEOUT are errors)
    }
}

/// Cohere's failed generations: an error, never an empty `stop`.
fn failed_finish(reason: Option<&str>) -> Option<&str> {
    reason.filter(|r| matches!(*r, "ERROR" | "TIMEOUT"))
}

pub fn translate_response(
    body: &[u8],
    model: &str,
    created: u64,
) -> Result<OpenAiResponse, TranslateError> {
    let r: ChatResponse = serde_json::from_slice(body)
        .map_err(|e| TranslateError::new(format!("invalid Cohere response: {e}"), None))?;
    if let Some(reason) = failed_finish(r.finish_reason.as_deref()) {
        return Err(TranslateError::invalid_output("Cohere", reason, None));
    }
    let mut text = String::new();
    let mut reasoning = String::new();
    for c in &r.message.content {
        match c.kind.as_deref() {
            Some("thinking") => {
                reasoning.push_str(c.thinking.as_deref().or(c.text.as_deref()).unwrap_or(""))
            }
            _ => text.push_str(c.text.as_deref().unwrap_or("")),
        }
    }
    let tool_calls: Vec<ToolCall> = r
        .message
        .tool_calls
        .into_iter()
        .enumerate()
        .map(|(i, tc)| {
            let f = tc.function.unwrap_or_default();
            ToolCall {
                id: Some(super::portable_call_id(
                    tc.id.as_deref(),
                    r.id.as_deref().unwrap_or(""),
                    i,
                )),
                kind: Some("function".into()),
                function: Some(FunctionCall {
                    name: f.name,
                    arguments: Some(f.arguments.unwrap_or_else(|| "{}".into())),
                }),
                ..Default::default()
            }
        })
        .collect();
    let mut extra = Map::new();
    if !reasoning.is_empty() {
        extra.insert("reasoning_content".into(), Value::String(reasoning));
    }
    if let Some(plan) = r.message.tool_plan.filter(|p| !p.is_empty()) {
        extra.insert("tool_plan".into(), Value::String(plan));
    }
    let usage = r.usage.map(|u| u.to_openai());
    let out = ChatCompletion {
        id: r.id.unwrap_or_else(|| format!("chatcmpl-cohere-{created}")),
        object: "chat.completion".into(),
        created,
        model: model.to_string(),
        choices: vec![Choice {
            index: 0,
            message: ChatMessage {
                role: "assistant".into(),
                content: Some(if text.is_empty() && !tool_calls.is_empty() {
                    Value::Null
                } else {
                    Value::String(text)
                }),
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                extra,
                ..Default::default()
            },
            finish_reason: Some(finish_reason(r.finish_reason.as_deref()).into()),
            extra: Map::new(),
        }],
        usage: usage.clone(),
        extra: Map::new(),
    };
    Ok(OpenAiResponse {
        body: serde_json::to_vec(&out).expect("response serializes"),
        usage,
    })
}

// ---- streams ---------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    delta: Value,
}

/// Cohere v2 SSE -> OpenAI chunks.
pub struct StreamState {
    decoder: SseDecoder,
    w: ChunkWriter,
    usage: Option<Usage>,
    /// Cohere tool-call index -> OpenAI tool call index (they are the same sequence, but only
    /// indexes that were started are valid).
    started_tools: Vec<u32>,
}

impl StreamState {
    pub fn new(model: &str, created: u64, include_usage: bool, max_event_bytes: usize) -> Self {
        StreamState {
            decoder: SseDecoder::with_limit(max_event_bytes),
            w: ChunkWriter::new(
                format!("chatcmpl-cohere-{created}"),
                model,
                created,
                include_usage,
            ),
            usage: None,
            started_tools: Vec::new(),
        }
    }

    fn handle(&mut self, data: &[u8], out: &mut BytesMut) {
        let Ok(ev) = serde_json::from_slice::<Event>(data) else {
            return;
        };
        let d = &ev.delta;
        let msg = d.get("message");
        let index = data_index(data);
        match ev.kind.as_str() {
            "message-start" => {
                if let Some(id) = ev.id {
                    self.w.id = id;
                }
                self.w.role(out);
            }
            "content-start" | "content-delta" => {
                let c = msg.and_then(|m| m.get("content"));
                if let Some(t) = c.and_then(|c| c.get("thinking")).and_then(Value::as_str) {
                    self.w.reasoning(t, out);
                } else if let Some(t) = c.and_then(|c| c.get("text")).and_then(Value::as_str) {
                    self.w.content(t, out);
                }
            }
            "tool-call-start" => {
                let tc = msg.and_then(|m| m.get("tool_calls"));
                let id = tc
                    .and_then(|t| t.get("id"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let f = tc.and_then(|t| t.get("function"));
                let name = f
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let args = f
                    .and_then(|f| f.get("arguments"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let ti = index.unwrap_or(self.started_tools.len() as u32);
                self.started_tools.push(ti);
                let id = super::portable_call_id(Some(id), &self.w.id, ti as usize);
                self.w.tool_call_start(ti, &id, name, out);
                self.w.tool_call_args(ti, args, out);
            }
            "tool-call-delta" => {
                let args = msg
                    .and_then(|m| m.pointer("/tool_calls/function/arguments"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let ti = index
                    .or_else(|| self.started_tools.last().copied())
                    .unwrap_or(0);
                if self.started_tools.contains(&ti) {
                    self.w.tool_call_args(ti, args, out);
                }
            }
            "message-end" => {
                if let Some(u) = d.get("usage") {
                    if let Ok(u) = serde_json::from_value::<NativeUsage>(u.clone()) {
                        self.usage = Some(u.to_openai());
                    }
                }
                let reason = d.get("finish_reason").and_then(Value::as_str);
                if let Some(reason) = failed_finish(reason) {
                    let detail = d.get("error").and_then(Value::as_str);
                    let e = TranslateError::invalid_output("Cohere", reason, detail);
                    self.w.error(&e.message, "api_error", e.code, out);
                    return;
                }
                self.w.finish(finish_reason(reason), out);
                let usage = self.usage.clone();
                self.w.end(usage.as_ref(), out);
            }
            _ => {} // content-end, tool-plan-delta, tool-call-end, citation-*
        }
    }
}

/// The event's top-level `index`, if any.
fn data_index(data: &[u8]) -> Option<u32> {
    #[derive(Deserialize)]
    struct Idx {
        #[serde(default)]
        index: Option<u32>,
    }
    serde_json::from_slice::<Idx>(data).ok()?.index
}

impl NativeEvents for StreamState {
    native_stream_parts!();

    fn truncated_message(&self) -> &'static str {
        "the provider ended the stream before message-end"
    }

    fn skip(ev: &SseEvent) -> bool {
        // A trailing `[DONE]` (some deployments send one) carries nothing to translate.
        ev.is_done()
    }
}
