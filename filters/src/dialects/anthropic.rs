//! Anthropic Messages API (`POST /v1/messages`, `x-api-key`, `anthropic-version`).

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::chunks::ChunkWriter;
use super::native_stream_parts;
use super::{
    arguments_object, content_text, finish_dropped, image_url, parse_data_url, stop_list,
    NativeEvents, NativeRequest, OpenAiResponse, RequestOptions, TranslateError,
};
use crate::openai::{
    ChatCompletion, ChatCompletionRequest, ChatMessage, Choice, FunctionCall, ToolCall,
};
use crate::sse::SseDecoder;
use crate::usage::{CompletionTokensDetails, PromptTokensDetails, Usage};

/// Request fields Anthropic accepts as they are (native extensions a client may send).
const NATIVE_PASSTHROUGH: &[&str] = &["top_k", "thinking", "output_config"];

/// The forced tool that carries an emulated `response_format`: its input is the answer.
pub const JSON_TOOL: &str = "json_response";
/// OpenAI fields consumed by the translation itself.
const CONSUMED: &[&str] = &[
    "user",
    "parallel_tool_calls",
    "n",
    "stream_options",
    "reasoning_effort",
    "response_format",
];

/// Claude 4.5 and later take `output_config.format` (structured outputs).
fn structured_outputs(model: &str) -> bool {
    claude_version(model) >= (4, 5)
}

/// `reasoning_effort` as a thinking budget (Anthropic's minimum is 1,024).
fn thinking_budget(effort: &str) -> Option<u64> {
    match effort {
        "low" => Some(2048),
        "medium" => Some(8192),
        "high" | "xhigh" => Some(24576),
        _ => None, // none, minimal: no thinking
    }
}

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u64,
    messages: Vec<Message>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Value>,
    #[serde(flatten)]
    native: Map<String, Value>,
}

#[derive(Serialize, Debug)]
struct Message {
    role: &'static str,
    content: Vec<Value>,
}

pub fn translate_request(
    req: &ChatCompletionRequest,
    opts: &RequestOptions,
) -> Result<NativeRequest, TranslateError> {
    let mut dropped = super::non_function_tools(req);
    // Assistant turns that carry signed thinking (by message index).
    let mut signed_turns: Vec<usize> = Vec::new();
    let mut system_blocks: Vec<Value> = Vec::new();
    let mut messages: Vec<Message> = Vec::new();
    let mut push = |role: &'static str, blocks: Vec<Value>| {
        if blocks.is_empty() {
            return;
        }
        // Anthropic requires alternating roles: merge consecutive turns of the same role
        // (consecutive tool results become one user turn).
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => messages.push(Message {
                role,
                content: blocks,
            }),
        }
    };
    for (i, m) in req.messages.iter().enumerate() {
        match m.role.as_str() {
            "system" | "developer" => system_blocks.extend(text_blocks(m.content.as_ref())),
            "user" => push("user", user_blocks(m.content.as_ref(), i)?),
            "assistant" => {
                let mut blocks = thinking_blocks(m);
                if !blocks.is_empty() {
                    signed_turns.push(i);
                }
                blocks.extend(text_blocks(m.content.as_ref()));
                for tc in m.tool_calls.iter().flatten() {
                    let f = tc.function.as_ref();
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": tc.id.clone().unwrap_or_else(|| format!("toolu_{i}")),
                        "name": f.and_then(|f| f.name.clone()).unwrap_or_default(),
                        "input": arguments_object(f.and_then(|f| f.arguments.as_deref())),
                    }));
                }
                push("assistant", blocks);
            }
            "tool" | "function" => {
                let id = m
                    .tool_call_id
                    .clone()
                    .or_else(|| m.name.clone())
                    .ok_or_else(|| {
                        TranslateError::new(
                            format!("messages[{i}]: tool message without tool_call_id"),
                            Some("messages"),
                        )
                    })?;
                let mut block = json!({"type": "tool_result", "tool_use_id": id, "content": content_text(m.content.as_ref())});
                if m.extra.get("is_error") == Some(&Value::Bool(true)) {
                    block["is_error"] = Value::Bool(true);
                }
                push("user", vec![block]);
            }
            other => {
                return Err(TranslateError::new(
                    format!("messages[{i}]: unsupported role {other:?}"),
                    Some("messages"),
                ))
            }
        }
    }
    if messages.is_empty() {
        return Err(TranslateError::new(
            "messages must contain at least one user or assistant message",
            Some("messages"),
        ));
    }

    let system = if system_blocks.is_empty() {
        None
    } else if system_blocks
        .iter()
        .all(|b| b.get("cache_control").is_none())
    {
        let text: Vec<&str> = system_blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect();
        Some(Value::String(text.join("\n\n")))
    } else {
        Some(Value::Array(system_blocks))
    };

    let tools = req.tools.as_ref().map(|tools| {
        tools
            .iter()
            .filter_map(|t| t.function.as_ref())
            .map(|f| {
                let mut tool = json!({
                    "name": f.name,
                    "input_schema": f.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                });
                if let Some(d) = &f.description {
                    tool["description"] = Value::String(d.clone());
                }
                if let Some(cc) = f.extra.get("cache_control") {
                    tool["cache_control"] = cc.clone();
                }
                tool
            })
            .collect::<Vec<_>>()
    });
    let mut tool_choice = match &req.tool_choice {
        None => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "none" => Some(json!({"type": "none"})),
            "required" => Some(json!({"type": "any"})),
            other => {
                return Err(TranslateError::new(
                    format!("unsupported tool_choice {other:?}"),
                    Some("tool_choice"),
                ))
            }
        },
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => Some(json!({"type": "tool", "name": name})),
            None => {
                return Err(TranslateError::new(
                    "tool_choice object needs function.name",
                    Some("tool_choice"),
                ))
            }
        },
    };
    if req.extra.get("parallel_tool_calls") == Some(&Value::Bool(false)) && tools.is_some() {
        let tc = tool_choice.get_or_insert_with(|| json!({"type": "auto"}));
        if tc["type"] != "none" {
            tc["disable_parallel_tool_use"] = Value::Bool(true);
        }
    }
    let metadata = req
        .extra
        .get("user")
        .and_then(Value::as_str)
        .map(|u| json!({ "user_id": u }));

    // With thinking on, the last assistant turn that called tools must start with its signed
    // thinking. A history another provider wrote has none: thinking is dropped for this
    // request rather than answered with a 400.
    let unsigned_tool_turn = req
        .messages
        .iter()
        .enumerate()
        .rev()
        .find(|(_, m)| m.role == "assistant")
        .is_some_and(|(i, m)| {
            m.tool_calls.as_ref().is_some_and(|c| !c.is_empty()) && !signed_turns.contains(&i)
        });
    let mut native = Map::new();
    for (k, v) in &req.extra {
        if k == "thinking" && unsigned_tool_turn && thinking_on(v) {
            dropped.push(k.clone());
        } else if k == "service_tier" {
            // OpenAI's tiers mean nothing here: `auto` and `default` have Anthropic
            // equivalents, the others (`flex`, `priority`, `scale`) are dropped.
            match v.as_str() {
                Some("auto") => {
                    native.insert(k.clone(), json!("auto"));
                }
                Some("default" | "standard_only") => {
                    native.insert(k.clone(), json!("standard_only"));
                }
                _ => dropped.push(k.clone()),
            }
        } else if NATIVE_PASSTHROUGH.contains(&k.as_str()) {
            native.insert(k.clone(), v.clone());
        } else if (k == "n" && v.as_u64().is_some_and(|n| n > 1)) || !CONSUMED.contains(&k.as_str())
        {
            dropped.push(k.clone());
        }
    }
    // `reasoning_effort` turns on thinking (unless the client sent `thinking` itself): the
    // budget comes on top of the client's `max_tokens`, so that still caps the visible answer,
    // and what thinking forbids is adjusted and named.
    let mut max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(opts.default_max_tokens);
    let effort_budget = req
        .extra
        .get("reasoning_effort")
        .and_then(Value::as_str)
        .and_then(thinking_budget)
        .map(|b| opts.thinking_budget.map_or(b, |(lo, hi)| b.clamp(lo, hi)))
        .filter(|_| !req.extra.contains_key("thinking") && !unsigned_tool_turn);
    let mut temperature_fixed = None;
    if let Some(budget) = effort_budget {
        native.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": budget}),
        );
        // Thinking counts inside `max_tokens`, which the model caps.
        max_tokens = max_tokens.saturating_add(budget);
        if let Some(cap) = opts.max_output_tokens {
            max_tokens = max_tokens.min(cap).max(budget + 1);
        }
        temperature_fixed = Some(());
        if native.remove("top_k").is_some() {
            dropped.push("top_k".into());
        }
        if let Some(tc) = &mut tool_choice {
            if matches!(tc["type"].as_str(), Some("any" | "tool")) {
                // Thinking allows only `auto` or `none`.
                tc["type"] = json!("auto");
                if let Some(o) = tc.as_object_mut() {
                    o.remove("name");
                }
                dropped.push("tool_choice".into());
            }
        }
    }
    // Anthropic's temperature range is 0-1 (OpenAI's 0-2): clamped, and named. Claude 4.1 and
    // later refuse `temperature` together with `top_p`: the temperature is kept.
    let mut temperature = req.temperature;
    if temperature.is_some_and(|t| t > 1.0) {
        temperature = Some(1.0);
        dropped.push("temperature".into());
    }
    let mut top_p = req.top_p;
    let exclusive = opts
        .sampling_exclusive
        .unwrap_or_else(|| sampling_exclusive(&req.model));
    if temperature.is_some() && top_p.is_some() && exclusive {
        top_p = None;
        dropped.push("top_p".into());
    }
    if temperature_fixed.is_some() {
        // With thinking: temperature only 1, top_p only 0.95 to 1.
        if temperature.is_some_and(|t| t != 1.0) {
            temperature = None;
            dropped.push("temperature".into());
        }
        if top_p.is_some_and(|p| p < 0.95) {
            top_p = Some(0.95);
            dropped.push("top_p".into());
        }
    }
    // `response_format`: structured outputs on models that have them; otherwise a forced tool
    // whose input is returned as the content, or (beside the client's own tools, or with
    // thinking, which forbids forcing a tool) an instruction. Never dropped silently.
    let mut json_tool = None;
    let mut tools = tools;
    let mut system = system;
    if let Some(rf) = req.extra.get("response_format") {
        let schema = match rf.get("type").and_then(Value::as_str) {
            Some("json_schema") => Some(
                rf.pointer("/json_schema/schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
            ),
            Some("json_object") => None,
            _ => Some(Value::Null), // "text": nothing to do
        };
        let thinking = native.get("thinking").is_some_and(thinking_on);
        match schema {
            Some(Value::Null) => {}
            Some(s)
                if opts
                    .structured_outputs
                    .unwrap_or_else(|| structured_outputs(&req.model))
                    && !native.contains_key("output_config") =>
            {
                native.insert(
                    "output_config".into(),
                    json!({"format": {"type": "json_schema", "schema": s}}),
                );
            }
            s if tools.is_none() && !thinking => {
                let schema = s.unwrap_or_else(|| json!({"type": "object"}));
                tools = Some(vec![json!({"name": JSON_TOOL,
                    "description": "Give the answer as this tool's input: a JSON object.",
                    "input_schema": schema})]);
                tool_choice = Some(json!({"type": "tool", "name": JSON_TOOL}));
                json_tool = Some(JSON_TOOL.to_string());
            }
            s => {
                let mut text = "Answer with one JSON object and nothing else.".to_string();
                if let Some(schema) = s {
                    text.push_str(&format!(" It must match this JSON schema: {schema}"));
                }
                system = Some(match system {
                    None => Value::String(text),
                    Some(Value::String(t)) => Value::String(format!("{t}\n\n{text}")),
                    Some(Value::Array(mut blocks)) => {
                        blocks.push(json!({"type": "text", "text": text}));
                        Value::Array(blocks)
                    }
                    Some(other) => other,
                });
            }
        }
    }
    let body = MessagesRequest {
        model: &req.model,
        max_tokens,
        messages,
        system,
        temperature,
        top_p,
        stop_sequences: stop_list(req.stop.as_ref()),
        stream: req.stream.filter(|s| *s),
        tools,
        tool_choice,
        metadata,
        native,
    };
    Ok(NativeRequest {
        body: serde_json::to_vec(&body).expect("request serializes"),
        stream: req.stream.unwrap_or(false),
        dropped: finish_dropped(dropped),
        json_tool,
    })
}

/// Claude models from 4.1 on accept `temperature` or `top_p`, not both (400 otherwise).
/// Read from the model name (`claude-<family>-<major>-<minor>[-date]`; a date is no minor).
pub fn sampling_exclusive(model: &str) -> bool {
    claude_version(model) >= (4, 1)
}

/// `(major, minor)` of a Claude model name, `(0, 0)` when it names none.
fn claude_version(model: &str) -> (u32, u32) {
    let Some(rest) = model.split("claude-").nth(1) else {
        return (0, 0);
    };
    let small = |p: &&str| !p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit());
    // Vertex names put the date after `@` (`claude-sonnet-4-5@20250929`).
    let parts: Vec<&str> = rest.split(['-', '@']).collect();
    let Some(i) = parts.iter().position(small) else {
        return (0, 0);
    };
    let num = |p: &str| p.parse::<u32>().unwrap_or(0);
    let major = num(parts[i]);
    let minor = parts.get(i + 1).filter(|p| small(p)).map_or(0, |p| num(p));
    // `claude-3-7-sonnet` names the version before the family: 3.7.
    (major, minor)
}

fn thinking_on(v: &Value) -> bool {
    matches!(
        v.get("type").and_then(Value::as_str),
        Some("enabled" | "adaptive")
    )
}

/// The reasoning state of an assistant message as Anthropic blocks, in order: `thinking_blocks`
/// (thinking with its signature, redacted thinking with its data), else the older
/// `reasoning_content` + `reasoning_signature` pair. Thinking without a signature cannot be
/// replayed and is left out.
fn thinking_blocks(m: &ChatMessage) -> Vec<Value> {
    if let Some(Value::Array(blocks)) = m.extra.get("thinking_blocks") {
        return blocks
            .iter()
            .filter_map(|b| match b.get("type").and_then(Value::as_str) {
                Some("thinking") => {
                    let sig = b.get("signature").and_then(Value::as_str)?;
                    let text = b.get("thinking").and_then(Value::as_str).unwrap_or("");
                    Some(json!({"type": "thinking", "thinking": text, "signature": sig}))
                }
                Some("redacted_thinking") => {
                    let data = b.get("data").and_then(Value::as_str)?;
                    Some(json!({"type": "redacted_thinking", "data": data}))
                }
                _ => None,
            })
            .collect();
    }
    match (
        m.extra.get("reasoning_content").and_then(Value::as_str),
        m.extra.get("reasoning_signature").and_then(Value::as_str),
    ) {
        (Some(r), Some(sig)) => {
            vec![json!({"type": "thinking", "thinking": r, "signature": sig})]
        }
        _ => Vec::new(),
    }
}

/// Text content as text blocks (keeping `cache_control` on parts that carry it).
fn text_blocks(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::String(s)) if !s.is_empty() => vec![json!({"type": "text", "text": s})],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| {
                // Anthropic refuses empty text blocks.
                let text = p.get("text")?.as_str().filter(|t| !t.is_empty())?;
                let mut b = json!({"type": "text", "text": text});
                if let Some(cc) = p.get("cache_control") {
                    b["cache_control"] = cc.clone();
                }
                Some(b)
            })
            .collect(),
        _ => vec![],
    }
}

fn user_blocks(content: Option<&Value>, i: usize) -> Result<Vec<Value>, TranslateError> {
    let Some(Value::Array(parts)) = content else {
        return Ok(text_blocks(content));
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for p in parts {
        match p.get("type").and_then(Value::as_str) {
            Some("text") => blocks.extend(text_blocks(Some(&Value::Array(vec![p.clone()])))),
            Some("file") => {
                let (mime, data) = super::file_part(p, i)?;
                let mut b = json!({"type": "document", "source": {"type": "base64", "media_type": mime, "data": data}});
                if let Some(cc) = p.get("cache_control") {
                    b["cache_control"] = cc.clone();
                }
                blocks.push(b);
            }
            Some("image_url") => {
                let url = image_url(p).ok_or_else(|| {
                    TranslateError::new(
                        format!("messages[{i}]: image_url part without url"),
                        Some("messages"),
                    )
                })?;
                let source = match parse_data_url(url) {
                    Some((mime, data)) => {
                        json!({"type": "base64", "media_type": mime, "data": data})
                    }
                    None => json!({"type": "url", "url": url}),
                };
                let mut b = json!({"type": "image", "source": source});
                if let Some(cc) = p.get("cache_control") {
                    b["cache_control"] = cc.clone();
                }
                blocks.push(b);
            }
            other => {
                return Err(TranslateError::new(
                    format!(
                        "messages[{i}]: content part type {other:?} is not supported by Anthropic"
                    ),
                    Some("messages"),
                ))
            }
        }
    }
    Ok(blocks)
}

// ---- responses -------------------------------------------------------------------------------

#[derive(Deserialize, Default, Debug, Clone)]
pub(crate) struct NativeUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    /// The cache writes split by TTL (`ephemeral_5m_input_tokens`, `ephemeral_1h_input_tokens`),
    /// for pricing.
    #[serde(default)]
    cache_creation: Option<Value>,
}

impl NativeUsage {
    /// Later events carry cumulative values; fields they omit keep their earlier value.
    pub(crate) fn merge(&mut self, other: &NativeUsage) {
        if other.input_tokens.is_some() {
            self.input_tokens = other.input_tokens;
        }
        if other.output_tokens.is_some() {
            self.output_tokens = other.output_tokens;
        }
        if other.cache_creation_input_tokens.is_some() {
            self.cache_creation_input_tokens = other.cache_creation_input_tokens;
        }
        if other.cache_read_input_tokens.is_some() {
            self.cache_read_input_tokens = other.cache_read_input_tokens;
        }
        if other.cache_creation.is_some() {
            self.cache_creation.clone_from(&other.cache_creation);
        }
    }

    /// OpenAI's `prompt_tokens` includes cached tokens; Anthropic's `input_tokens` does not.
    pub(crate) fn to_openai(&self) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let prompt =
            self.input_tokens.unwrap_or(0) + read + self.cache_creation_input_tokens.unwrap_or(0);
        let completion = self.output_tokens.unwrap_or(0);
        let mut extra = Map::new();
        if let Some(c) = &self.cache_creation {
            extra.insert("cache_creation".into(), c.clone());
        }
        if let Some(c) = self.cache_creation_input_tokens {
            extra.insert("cache_creation_input_tokens".into(), c.into());
        }
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: Some(read),
                ..Default::default()
            }),
            completion_tokens_details: None::<CompletionTokensDetails>,
            extra,
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    Thinking {
        thinking: String,
        #[serde(default)]
        signature: Option<String>,
    },
    RedactedThinking {
        data: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessagesResponse {
    id: String,
    #[serde(default)]
    model: Option<String>,
    /// Required: a body without it is not a Messages response (e.g. a misconfigured dialect).
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: NativeUsage,
}

pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop", // end_turn, stop_sequence, pause_turn
    }
}

pub fn translate_response(
    body: &[u8],
    model: &str,
    created: u64,
    json_tool: Option<&str>,
) -> Result<OpenAiResponse, TranslateError> {
    let r: MessagesResponse = serde_json::from_slice(body)
        .map_err(|e| TranslateError::new(format!("invalid Anthropic response: {e}"), None))?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut signature = None;
    let mut blocks = Vec::new();
    let mut tool_calls = Vec::new();
    let mut emulated = false;
    for b in r.content {
        match b {
            Block::Text { text: t } => text.push_str(&t),
            Block::Thinking {
                thinking,
                signature: s,
            } => {
                blocks.push(json!({"type": "thinking", "thinking": thinking, "signature": s}));
                reasoning.push_str(&thinking);
                signature = s.or(signature);
            }
            Block::RedactedThinking { data } => {
                blocks.push(json!({"type": "redacted_thinking", "data": data}));
            }
            // The emulated `response_format`: the tool's input is the answer.
            Block::ToolUse { name, input, .. } if json_tool == Some(name.as_str()) => {
                text.push_str(&input.to_string());
                emulated = true;
            }
            Block::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                id: Some(id),
                kind: Some("function".into()),
                function: Some(FunctionCall {
                    name: Some(name),
                    arguments: Some(input.to_string()),
                }),
                ..Default::default()
            }),
            Block::Other => {}
        }
    }
    let mut extra = Map::new();
    if !reasoning.is_empty() {
        extra.insert("reasoning_content".into(), Value::String(reasoning));
        // The older pair replays one block: only when there is exactly one (several blocks
        // joined under one signature would be refused; `thinking_blocks` carries them).
        if let (Some(s), 1) = (signature, blocks.len()) {
            extra.insert("reasoning_signature".into(), Value::String(s));
        }
    }
    if !blocks.is_empty() {
        // Every block, in order, each with its own signature: what the next turn must replay.
        extra.insert("thinking_blocks".into(), Value::Array(blocks));
    }
    let usage = r.usage.to_openai();
    let answered_as_json = emulated && tool_calls.is_empty();
    let message = ChatMessage {
        role: "assistant".into(),
        content: Some(if text.is_empty() && !tool_calls.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        }),
        tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
        extra,
        ..Default::default()
    };
    let out = ChatCompletion {
        id: r.id,
        object: "chat.completion".into(),
        created,
        model: r.model.unwrap_or_else(|| model.to_string()),
        choices: vec![Choice {
            index: 0,
            message,
            finish_reason: Some(
                if answered_as_json {
                    "stop"
                } else {
                    finish_reason(r.stop_reason.as_deref())
                }
                .into(),
            ),
            extra: Map::new(),
        }],
        usage: Some(usage.clone()),
        extra: Map::new(),
    };
    Ok(OpenAiResponse {
        body: serde_json::to_vec(&out).expect("response serializes"),
        usage: Some(usage),
    })
}

// ---- streams ---------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: StartBlock,
    },
    ContentBlockDelta {
        index: u32,
        delta: BlockChange,
    },
    ContentBlockStop {
        #[serde(default)]
        index: u32,
    },
    MessageDelta {
        #[serde(default)]
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<NativeUsage>,
    },
    MessageStop {},
    Ping {},
    Error {
        error: ErrorBody,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<NativeUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    RedactedThinking {
        data: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockChange {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    SignatureDelta {
        signature: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize, Default)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: String,
}

/// Anthropic SSE -> OpenAI chunks.
pub struct StreamState {
    decoder: SseDecoder,
    w: ChunkWriter,
    native_usage: NativeUsage,
    usage: Option<Usage>,
    /// Anthropic content block index -> OpenAI tool call index.
    tool_index: Vec<(u32, u32)>,
    tools: u32,
    stop_reason: Option<String>,
    finished: bool,
    /// The thinking block being streamed: (content block index, its text, its signature).
    thinking: Option<(u32, String, Option<String>)>,
    /// The emulated `response_format` tool, and the content block that is streaming it.
    json_tool: Option<String>,
    json_block: Option<u32>,
}

impl StreamState {
    pub fn new(model: &str, created: u64, include_usage: bool, max_event_bytes: usize) -> Self {
        StreamState {
            decoder: SseDecoder::with_limit(max_event_bytes),
            w: ChunkWriter::new("", model, created, include_usage),
            native_usage: NativeUsage::default(),
            usage: None,
            tool_index: Vec::new(),
            tools: 0,
            stop_reason: None,
            finished: false,
            thinking: None,
            json_tool: None,
            json_block: None,
        }
    }

    /// The OpenAI finish reason: an emulated `response_format` tool is an answer, not a call.
    fn finish_reason(&self) -> &'static str {
        if self.json_block.is_some() && self.tools == 0 {
            "stop"
        } else {
            finish_reason(self.stop_reason.as_deref())
        }
    }

    /// Streams the forced tool `name` (an emulated `response_format`) as content.
    pub fn with_json_tool(mut self, name: Option<&str>) -> Self {
        self.json_tool = name.map(str::to_string);
        self
    }

    fn handle(&mut self, data: &[u8], out: &mut BytesMut) {
        let Ok(ev) = serde_json::from_slice::<Event>(data) else {
            return; // not an event we understand (future event types are skipped)
        };
        match ev {
            Event::MessageStart { message } => {
                if let Some(id) = message.id {
                    self.w.id = id;
                }
                if let Some(m) = message.model {
                    self.w.model = m;
                }
                // Not reported as usage yet: `output_tokens` here is a placeholder (1). A stream
                // that ends before `message_delta` gets an estimate instead of an undercount.
                if let Some(u) = message.usage {
                    self.native_usage.merge(&u);
                }
                self.w.role(out);
            }
            Event::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                StartBlock::Text { text } => self.w.content(&text, out),
                StartBlock::Thinking { thinking } => {
                    self.w.reasoning(&thinking, out);
                    self.thinking = Some((index, thinking, None));
                }
                StartBlock::RedactedThinking { data } => self
                    .w
                    .thinking_block(json!({"type": "redacted_thinking", "data": data}), out),
                StartBlock::ToolUse { name, .. } if self.json_tool.as_deref() == Some(&name) => {
                    self.json_block = Some(index);
                }
                StartBlock::ToolUse { id, name } => {
                    let ti = self.tools;
                    self.tools += 1;
                    self.tool_index.push((index, ti));
                    self.w.tool_call_start(ti, &id, &name, out);
                }
                StartBlock::Other => {}
            },
            Event::ContentBlockDelta { index, delta } => match delta {
                BlockChange::TextDelta { text } => self.w.content(&text, out),
                BlockChange::ThinkingDelta { thinking } => {
                    if let Some((i, text, _)) = &mut self.thinking {
                        if *i == index {
                            text.push_str(&thinking);
                        }
                    }
                    self.w.reasoning(&thinking, out)
                }
                BlockChange::SignatureDelta { signature } => {
                    if let Some((i, _, sig)) = &mut self.thinking {
                        if *i == index {
                            *sig = Some(signature);
                        }
                    }
                }
                BlockChange::InputJsonDelta { partial_json } if self.json_block == Some(index) => {
                    self.w.content(&partial_json, out);
                }
                BlockChange::InputJsonDelta { partial_json } => {
                    if let Some(&(_, ti)) = self.tool_index.iter().find(|(b, _)| *b == index) {
                        self.w.tool_call_args(ti, &partial_json, out);
                    }
                }
                BlockChange::Other => {}
            },
            Event::MessageDelta { delta, usage } => {
                if let Some(u) = usage {
                    self.native_usage.merge(&u);
                    self.usage = Some(self.native_usage.to_openai());
                }
                if delta.stop_reason.is_some() {
                    self.stop_reason = delta.stop_reason;
                    let reason = self.finish_reason();
                    self.w.finish(reason, out);
                    self.finished = true;
                }
            }
            Event::MessageStop {} => {
                if !self.finished {
                    let reason = self.finish_reason();
                    self.w.finish(reason, out);
                    self.finished = true;
                }
                let usage = self.usage.clone();
                self.w.end(usage.as_ref(), out);
            }
            Event::Ping {} => {
                if !self.w.is_done() {
                    out.extend_from_slice(b": ping\n\n");
                }
            }
            Event::Error { error } => {
                let code = error.kind.unwrap_or_else(|| "api_error".into());
                let kind = if code == "overloaded_error" || code == "api_error" {
                    "api_error"
                } else {
                    "invalid_request_error"
                };
                self.w.error(&error.message, kind, Some(&code), out);
            }
            Event::ContentBlockStop { index } => {
                // A thinking block is complete once its signature has arrived (sent just
                // before its stop): one delta carries the whole block, to be sent back.
                if self.thinking.as_ref().is_some_and(|(i, _, _)| *i == index) {
                    if let Some((_, text, sig)) = self.thinking.take() {
                        self.w.thinking_block(
                            json!({"type": "thinking", "thinking": text, "signature": sig}),
                            out,
                        );
                    }
                }
            }
            Event::Other => {}
        }
    }
}

impl NativeEvents for StreamState {
    native_stream_parts!();

    fn truncated_message(&self) -> &'static str {
        "the provider ended the stream before message_stop"
    }
}

#[cfg(test)]
mod sampling_tests {
    #[test]
    fn claude_versions_that_refuse_temperature_with_top_p() {
        for (m, want) in [
            ("claude-opus-4-1-20250805", true),
            ("claude-sonnet-4-5", true),
            ("claude-haiku-4-5-20251001", true),
            ("claude-opus-4-7", true),
            ("claude-sonnet-4-20250514", false),
            ("claude-3-7-sonnet-latest", false),
            ("claude-3-5-haiku-20241022", false),
            ("my-llama", false),
            ("claude-sonnet-4-5@20250929", true),
            ("claude-sonnet-4@20250514", false),
        ] {
            assert_eq!(super::sampling_exclusive(m), want, "{m}");
        }
    }
}
