//! Google Gemini (`models/{model}:generateContent`, `:streamGenerateContent?alt=sse`,
//! `x-goog-api-key`).

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

/// Native request fields passed through unchanged (snake_case accepted as OpenAI clients write it).
const NATIVE_PASSTHROUGH: &[(&str, &str)] = &[
    ("safetySettings", "safetySettings"),
    ("safety_settings", "safetySettings"),
    ("cachedContent", "cachedContent"),
    ("cached_content", "cachedContent"),
];
const CONSUMED: &[&str] = &[
    "n",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "top_k",
    "parallel_tool_calls",
    "stream_options",
    "reasoning_effort",
];

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateRequest {
    contents: Vec<Content>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<Value>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    generation_config: Map<String, Value>,
    #[serde(flatten)]
    native: Map<String, Value>,
}

#[derive(Serialize, Debug)]
struct Content {
    role: &'static str,
    parts: Vec<Value>,
}

/// Google's documented placeholder for a function call whose thought signature is unknown.
pub const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

fn is_gemini_3(model: &str) -> bool {
    model
        .strip_prefix("models/")
        .unwrap_or(model)
        .starts_with("gemini-3")
}

/// `reasoning_effort` as each family takes it: Gemini 3 a `thinkingLevel` (Pro: `low`, `high`;
/// Flash also `minimal` and `medium`), Gemini 2.5 a budget within the model's range (Pro cannot
/// turn thinking off: 128 to 32,768; Flash-Lite 512 or 0; Flash 0 to 24,576).
fn thinking_config(model: &str, effort: &str, range: Option<(u64, u64)>) -> Value {
    let m = model.strip_prefix("models/").unwrap_or(model);
    if m.starts_with("gemini-3") {
        let flash = m.contains("flash");
        let level = match effort {
            "none" | "minimal" if flash => "minimal",
            "medium" if flash => "medium",
            "none" | "minimal" | "low" => "low",
            _ => "high",
        };
        return json!({"thinkingLevel": level, "includeThoughts": true});
    }
    let pro = m.contains("pro");
    let budget = match effort {
        "none" | "minimal" if pro => 128,
        "none" | "minimal" => 0,
        "low" => 1024,
        "medium" => 8192,
        _ => 24576,
    };
    // The model table's range wins over the built-in guesses.
    let budget = range.map_or(budget, |(lo, hi)| budget.clamp(lo, hi));
    json!({"thinkingBudget": budget, "includeThoughts": true})
}

/// Gemini 2.5 and 3 models refuse `presencePenalty` / `frequencyPenalty`.
fn penalties_refused(model: &str) -> bool {
    let m = model.strip_prefix("models/").unwrap_or(model);
    m.starts_with("gemini-2.5") || m.starts_with("gemini-3")
}

/// The native path for a model: `/models/{model}:generateContent` or the SSE stream variant.
/// The request path for `model`, or `None` when the name is not a model name: it becomes part
/// of the URL path, so only model-name characters are allowed (a name must not change the
/// method, `x:countTokens?`, or slip past model lists, `models/...`).
pub fn path(model: &str, stream: bool) -> Option<String> {
    let safe = model
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !model.contains("..")
        && !model.is_empty();
    if !safe {
        return None;
    }
    Some(if stream {
        format!("/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("/models/{model}:generateContent")
    })
}

pub fn translate_request(
    req: &ChatCompletionRequest,
    opts: &RequestOptions,
) -> Result<NativeRequest, TranslateError> {
    let mut dropped = super::non_function_tools(req);
    let mut system_parts: Vec<Value> = Vec::new();
    let mut contents: Vec<Content> = Vec::new();
    // functionResponse needs the function's name; tool messages only carry the call id.
    let mut call_names: Vec<(String, String)> = Vec::new();
    let mut push = |role: &'static str, parts: Vec<Value>| {
        if parts.is_empty() {
            return;
        }
        match contents.last_mut() {
            Some(last) if last.role == role => last.parts.extend(parts),
            _ => contents.push(Content { role, parts }),
        }
    };
    for (i, m) in req.messages.iter().enumerate() {
        match m.role.as_str() {
            "system" | "developer" => {
                let t = content_text(m.content.as_ref());
                if !t.is_empty() {
                    system_parts.push(json!({ "text": t }));
                }
            }
            "user" => push("user", user_parts(m.content.as_ref(), i)?),
            "assistant" => {
                let mut parts = Vec::new();
                let t = content_text(m.content.as_ref());
                if !t.is_empty() {
                    parts.push(json!({ "text": t }));
                }
                let mut signed = false;
                let first_call = parts.len();
                for tc in m.tool_calls.iter().flatten() {
                    let f = tc.function.as_ref();
                    let name = f.and_then(|f| f.name.clone()).unwrap_or_default();
                    if let Some(id) = &tc.id {
                        call_names.push((id.clone(), name.clone()));
                    }
                    let mut part = json!({"functionCall": {
                        "name": name,
                        "args": arguments_object(f.and_then(|f| f.arguments.as_deref())),
                    }});
                    // The thought signature goes back on the part it came with.
                    if let Some(sig) = tc
                        .extra
                        .get("extra_content")
                        .and_then(|e| e.pointer("/google/thought_signature"))
                        .and_then(Value::as_str)
                    {
                        part["thoughtSignature"] = Value::String(sig.to_string());
                        signed = true;
                    }
                    parts.push(part);
                }
                // Gemini 3 refuses a function-calling turn without a signature (400). History
                // another provider wrote has none: Google's documented placeholder takes its
                // place on the turn's first call.
                if !signed && parts.len() > first_call && is_gemini_3(&req.model) {
                    parts[first_call]["thoughtSignature"] = Value::String(SKIP_SIGNATURE.into());
                }
                push("model", parts);
            }
            "tool" | "function" => {
                let name = m
                    .name
                    .clone()
                    .or_else(|| {
                        let id = m.tool_call_id.as_deref()?;
                        // The nearest earlier call with this id (ids may repeat across turns
                        // in histories other gateways wrote).
                        call_names.iter().rfind(|(c, _)| c == id).map(|(_, n)| n.clone())
                    })
                    .ok_or_else(|| {
                        TranslateError::new(
                            format!("messages[{i}]: tool message whose tool_call_id matches no earlier tool call"),
                            Some("messages"),
                        )
                    })?;
                let text = content_text(m.content.as_ref());
                // The response must be an object: JSON objects pass as they are, anything else
                // is wrapped.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({ "content": text }),
                };
                push(
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            other => {
                return Err(TranslateError::new(
                    format!("messages[{i}]: unsupported role {other:?}"),
                    Some("messages"),
                ))
            }
        }
    }
    if contents.is_empty() {
        return Err(TranslateError::new(
            "messages must contain at least one user or assistant message",
            Some("messages"),
        ));
    }

    let tools = req.tools.as_ref().map(|tools| {
        let decls: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.function.as_ref())
            .map(|f| {
                let mut d = json!({ "name": f.name });
                if let Some(desc) = &f.description {
                    d["description"] = Value::String(desc.clone());
                }
                if let Some(p) = &f.parameters {
                    d["parametersJsonSchema"] = p.clone();
                }
                d
            })
            .collect();
        vec![json!({ "functionDeclarations": decls })]
    });
    let tool_config = match &req.tool_choice {
        None => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({"functionCallingConfig": {"mode": "AUTO"}})),
            "none" => Some(json!({"functionCallingConfig": {"mode": "NONE"}})),
            "required" => Some(json!({"functionCallingConfig": {"mode": "ANY"}})),
            other => {
                return Err(TranslateError::new(
                    format!("unsupported tool_choice {other:?}"),
                    Some("tool_choice"),
                ))
            }
        },
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => Some(
                json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}),
            ),
            None => {
                return Err(TranslateError::new(
                    "tool_choice object needs function.name",
                    Some("tool_choice"),
                ))
            }
        },
    };

    let mut gc = Map::new();
    let mut set = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            gc.insert(k.to_string(), v);
        }
    };
    set("temperature", req.temperature.map(Value::from));
    set("topP", req.top_p.map(Value::from));
    set(
        "maxOutputTokens",
        req.max_completion_tokens
            .or(req.max_tokens)
            .map(Value::from),
    );
    set(
        "stopSequences",
        stop_list(req.stop.as_ref()).map(Value::from),
    );
    let x = &req.extra;
    set("topK", x.get("top_k").cloned());
    set("seed", x.get("seed").cloned());
    // Gemini 2.5 and 3 refuse any non-zero penalty (400 "Penalty is not enabled"): dropped and
    // named there, passed to the models that take them.
    for (k, native) in [
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(v) = x.get(k) {
            if penalties_refused(&req.model) {
                if v.as_f64().is_some_and(|p| p != 0.0) {
                    dropped.push(k.to_string());
                }
            } else {
                set(native, Some(v.clone()));
            }
        }
    }
    match x.get("response_format") {
        Some(rf) if rf["type"] == "json_object" => {
            set("responseMimeType", Some("application/json".into()))
        }
        Some(rf) if rf["type"] == "json_schema" => {
            set("responseMimeType", Some("application/json".into()));
            set(
                "responseJsonSchema",
                rf.pointer("/json_schema/schema").cloned(),
            );
        }
        _ => {}
    }
    if let Some(effort) = x.get("reasoning_effort").and_then(Value::as_str) {
        set(
            "thinkingConfig",
            Some(thinking_config(&req.model, effort, opts.thinking_budget)),
        );
    }

    let mut native = Map::new();
    for (k, v) in x {
        if let Some((_, native_name)) = NATIVE_PASSTHROUGH.iter().find(|(n, _)| n == k) {
            native.insert(native_name.to_string(), v.clone());
        } else if k == "generationConfig" || k == "generation_config" {
            // Native generation settings the client sent explicitly win.
            if let Value::Object(m) = v {
                for (gk, gv) in m {
                    gc.insert(gk.clone(), gv.clone());
                }
            }
        } else if (k == "n" && v.as_u64().is_some_and(|n| n > 1))
            || (k == "parallel_tool_calls" && v == &Value::Bool(false))
            || !CONSUMED.contains(&k.as_str())
        {
            // n > 1: only the first candidate would be returned; Gemini has no switch for
            // parallel tool calls; `user` has no equivalent.
            dropped.push(k.clone());
        }
    }
    let body = GenerateRequest {
        contents,
        system_instruction: (!system_parts.is_empty()).then(|| json!({ "parts": system_parts })),
        tools,
        tool_config,
        generation_config: gc,
        native,
    };
    Ok(NativeRequest {
        body: serde_json::to_vec(&body).expect("request serializes"),
        stream: req.stream.unwrap_or(false),
        dropped: finish_dropped(dropped),
        json_tool: None,
    })
}

fn user_parts(content: Option<&Value>, i: usize) -> Result<Vec<Value>, TranslateError> {
    let Some(Value::Array(parts)) = content else {
        let t = content_text(content);
        return Ok(if t.is_empty() {
            vec![]
        } else {
            vec![json!({ "text": t })]
        });
    };
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        match p.get("type").and_then(Value::as_str) {
            Some("text") => {
                // No empty text parts (Gemini refuses a part with no data).
                let t = p.get("text").and_then(Value::as_str).unwrap_or("");
                if !t.is_empty() {
                    out.push(json!({ "text": t }));
                }
            }
            Some("file") => {
                let (mime, data) = super::file_part(p, i)?;
                out.push(json!({"inlineData": {"mimeType": mime, "data": data}}));
            }
            Some("input_audio") => {
                let (mime, data) = super::inline_audio(p).ok_or_else(|| {
                    TranslateError::new(
                        format!("messages[{i}]: input_audio part without data"),
                        Some("messages"),
                    )
                })?;
                out.push(json!({"inlineData": {"mimeType": mime, "data": data}}));
            }
            Some("image_url") => {
                let url = image_url(p).ok_or_else(|| {
                    TranslateError::new(
                        format!("messages[{i}]: image_url part without url"),
                        Some("messages"),
                    )
                })?;
                out.push(match parse_data_url(url) {
                    Some((mime, data)) => json!({"inlineData": {"mimeType": mime, "data": data}}),
                    // Gemini's `mimeType` is optional for `fileData`: when the URL does not name
                    // an image type, let Gemini detect it rather than guess `image/jpeg`.
                    None => match mime_from_url(url) {
                        Some(mime) => json!({"fileData": {"mimeType": mime, "fileUri": url}}),
                        None => json!({"fileData": {"fileUri": url}}),
                    },
                });
            }
            other => {
                return Err(TranslateError::new(
                    format!(
                        "messages[{i}]: content part type {other:?} is not supported by Gemini"
                    ),
                    Some("messages"),
                ))
            }
        }
    }
    Ok(out)
}

/// The image type a URL's path names by its extension, if it names one.
fn mime_from_url(url: &str) -> Option<&'static str> {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    let file = path.rsplit('/').next().unwrap_or(&path);
    let (_, ext) = file.rsplit_once('.')?;
    Some(match ext {
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "jpg" | "jpeg" => "image/jpeg",
        _ => return None,
    })
}

// ---- responses -------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    response_id: Option<String>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<CandidateContent>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct CandidateContent {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Part {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    function_call: Option<NativeFunctionCall>,
    /// Gemini's reasoning state for this part; must come back on the same part next turn.
    #[serde(default)]
    thought_signature: Option<String>,
}

#[derive(Deserialize)]
struct NativeFunctionCall {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    args: Value,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    total_token_count: u64,
    #[serde(default)]
    cached_content_token_count: Option<u64>,
    #[serde(default)]
    thoughts_token_count: Option<u64>,
}

impl UsageMetadata {
    fn to_openai(&self) -> Usage {
        let thoughts = self.thoughts_token_count.unwrap_or(0);
        let completion = self.candidates_token_count + thoughts;
        Usage {
            prompt_tokens: self.prompt_token_count,
            completion_tokens: completion,
            total_tokens: self
                .total_token_count
                .max(self.prompt_token_count + completion),
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: Some(self.cached_content_token_count.unwrap_or(0)),
                ..Default::default()
            }),
            completion_tokens_details: self.thoughts_token_count.map(|t| CompletionTokensDetails {
                reasoning_tokens: Some(t),
                ..Default::default()
            }),
            extra: Map::new(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

/// Finish reasons that mean the model failed to produce an answer (a malformed or unexpected
/// tool call, a missing signature): an error, never an empty `stop`.
pub fn failed_finish(reason: Option<&str>) -> Option<&str> {
    reason.filter(|r| {
        matches!(
            *r,
            "MALFORMED_FUNCTION_CALL"
                | "UNEXPECTED_TOOL_CALL"
                | "TOO_MANY_TOOL_CALLS"
                | "MISSING_THOUGHT_SIGNATURE"
        )
    })
}

pub fn finish_reason(reason: Option<&str>, has_tool_calls: bool) -> &'static str {
    match reason {
        Some("MAX_TOKENS") => "length",
        Some(
            "SAFETY"
            | "RECITATION"
            | "BLOCKLIST"
            | "PROHIBITED_CONTENT"
            | "SPII"
            | "IMAGE_SAFETY"
            | "IMAGE_PROHIBITED_CONTENT",
        ) => "content_filter",
        _ if has_tool_calls => "tool_calls",
        _ => "stop",
    }
}

/// A tool call's id: Gemini's own when it sent one, else one unique across turns (from the
/// response id): `call_<n>` would repeat every turn and pair a later result with an earlier
/// call.
fn call_id(id: Option<String>, response: &str, index: usize) -> String {
    super::portable_call_id(id.as_deref(), response, index)
}

/// A stand-in for a missing `responseId`: a hash of the answer's own bytes, so two answers
/// in the same second do not share call ids (Gemini normally sends one).
fn fallback_response_id(created: u64, bytes: &[u8]) -> String {
    let h = super::fnv1a(bytes);
    format!("chatcmpl-gemini-{h:016x}{created}")
}

/// `extra_content` carrying a thought signature (Google's OpenAI-compatible carrier).
fn signature_carrier(sig: Option<String>) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(s) = sig {
        m.insert(
            "extra_content".into(),
            json!({"google": {"thought_signature": s}}),
        );
    }
    m
}

/// Arguments as JSON text: a call without `args` has an empty object, never `null`.
fn args_text(args: &Value) -> String {
    if args.is_null() {
        "{}".into()
    } else {
        args.to_string()
    }
}

pub fn translate_response(
    body: &[u8],
    model: &str,
    created: u64,
) -> Result<OpenAiResponse, TranslateError> {
    let r: GenerateResponse = serde_json::from_slice(body)
        .map_err(|e| TranslateError::new(format!("invalid Gemini response: {e}"), None))?;
    if r.candidates.is_empty() && r.prompt_feedback.is_none() {
        return Err(TranslateError::new(
            "invalid Gemini response: no candidates and no promptFeedback",
            None,
        ));
    }
    let blocked = r
        .prompt_feedback
        .as_ref()
        .and_then(|p| p.block_reason.clone());
    let cand = r.candidates.into_iter().next().unwrap_or_default();
    if let Some(reason) = failed_finish(cand.finish_reason.as_deref()) {
        return Err(TranslateError::invalid_output("Gemini", reason, None));
    }
    let response_id = r
        .response_id
        .unwrap_or_else(|| fallback_response_id(created, body));
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for p in cand.content.map(|c| c.parts).unwrap_or_default() {
        if let Some(fc) = p.function_call {
            let id = call_id(fc.id, &response_id, tool_calls.len());
            tool_calls.push(ToolCall {
                id: Some(id),
                kind: Some("function".into()),
                function: Some(FunctionCall {
                    name: Some(fc.name),
                    arguments: Some(args_text(&fc.args)),
                }),
                extra: signature_carrier(p.thought_signature),
                ..Default::default()
            });
        } else if let Some(t) = p.text {
            if p.thought == Some(true) {
                reasoning.push_str(&t);
            } else {
                text.push_str(&t);
            }
        }
    }
    let finish = if blocked.is_some() {
        "content_filter"
    } else {
        finish_reason(cand.finish_reason.as_deref(), !tool_calls.is_empty())
    };
    let mut extra = Map::new();
    if !reasoning.is_empty() {
        extra.insert("reasoning_content".into(), Value::String(reasoning));
    }
    let usage = r.usage_metadata.map(|u| u.to_openai());
    let out = ChatCompletion {
        id: response_id,
        object: "chat.completion".into(),
        created,
        model: r.model_version.unwrap_or_else(|| model.to_string()),
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
            finish_reason: Some(finish.into()),
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
struct StreamError {
    error: StreamErrorBody,
}

#[derive(Deserialize)]
struct StreamErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: Option<String>,
}

/// Gemini SSE (each event a whole `GenerateContentResponse`) -> OpenAI chunks.
pub struct StreamState {
    decoder: SseDecoder,
    w: ChunkWriter,
    usage: Option<Usage>,
    tools: u32,
    finish: Option<&'static str>,
    id_set: bool,
}

impl StreamState {
    pub fn new(model: &str, created: u64, include_usage: bool, max_event_bytes: usize) -> Self {
        StreamState {
            decoder: SseDecoder::with_limit(max_event_bytes),
            w: ChunkWriter::new(
                format!("chatcmpl-gemini-{created}"),
                model,
                created,
                include_usage,
            ),
            usage: None,
            tools: 0,
            finish: None,
            id_set: false,
        }
    }

    fn handle(&mut self, data: &[u8], out: &mut BytesMut) {
        if let Ok(e) = serde_json::from_slice::<StreamError>(data) {
            let code = e.error.status.map(|s| s.to_ascii_lowercase());
            self.w.error(
                &e.error.message,
                "api_error",
                code.as_deref().or(Some("upstream_error")),
                out,
            );
            return;
        }
        let Ok(r) = serde_json::from_slice::<GenerateResponse>(data) else {
            return;
        };
        if !self.id_set {
            self.id_set = true;
            match r.response_id {
                Some(id) => self.w.id = id,
                None => self.w.id = fallback_response_id(self.w.created, data),
            }
            if let Some(m) = r.model_version {
                self.w.model = m;
            }
        }
        self.w.role(out);
        if let Some(u) = &r.usage_metadata {
            self.usage = Some(u.to_openai());
        }
        if r.prompt_feedback
            .as_ref()
            .and_then(|p| p.block_reason.as_ref())
            .is_some()
        {
            self.finish = Some("content_filter");
        }
        for cand in r.candidates {
            for p in cand.content.map(|c| c.parts).unwrap_or_default() {
                if let Some(fc) = p.function_call {
                    let ti = self.tools;
                    self.tools += 1;
                    let id = call_id(fc.id, &self.w.id, ti as usize);
                    let extra = signature_carrier(p.thought_signature);
                    self.w.tool_call_start_with(ti, &id, &fc.name, &extra, out);
                    self.w.tool_call_args(ti, &args_text(&fc.args), out);
                } else if let Some(t) = p.text {
                    if p.thought == Some(true) {
                        self.w.reasoning(&t, out);
                    } else {
                        self.w.content(&t, out);
                    }
                }
            }
            if let Some(reason) = failed_finish(cand.finish_reason.as_deref()) {
                let message = format!("Gemini ended the answer with {reason}");
                self.w
                    .error(&message, "api_error", Some(super::INVALID_OUTPUT), out);
                return;
            }
            if let Some(f) = cand.finish_reason {
                self.finish = Some(finish_reason(Some(&f), self.tools > 0));
            }
        }
    }
}

impl NativeEvents for StreamState {
    native_stream_parts!();

    fn clean_end(&mut self, out: &mut BytesMut) -> bool {
        // Gemini has no end-of-stream event: a clean end after a finishReason is the end.
        let Some(f) = self.finish else { return false };
        self.w.finish(f, out);
        let usage = self.usage.clone();
        self.w.end(usage.as_ref(), out);
        true
    }

    fn truncated_message(&self) -> &'static str {
        "the provider ended the stream without a finishReason"
    }
}
