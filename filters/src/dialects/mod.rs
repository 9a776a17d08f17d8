//! Native provider dialects behind the OpenAI Chat Completions API.
//!
//! Each dialect module has three pure parts: request translation (OpenAI -> native), response
//! translation (native -> OpenAI `chat.completion`) and a stateful stream translator (native SSE
//! bytes in arbitrary chunks -> OpenAI `chat.completion.chunk` events, `[DONE]` exactly once).
//! Parameters a dialect cannot express are dropped and listed so the gateway can report them.

pub mod anthropic;
pub mod chunks;
pub mod cohere;
pub mod google;
pub mod model_list;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::Value;

use crate::openai::{error_type_for_status, ChatCompletionRequest, ErrorEnvelope};
use crate::sse::{EventTooLarge, SseDecoder, SseEvent};
use crate::stream_relay::{OpenAiStreamRelay, StreamEnd};
use crate::usage::{StreamStats, Usage};

/// The API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// OpenAI Chat Completions (and every OpenAI-compatible server).
    #[default]
    Openai,
    /// Anthropic Messages (`POST /v1/messages`).
    Anthropic,
    /// Google Gemini (`generateContent` / `streamGenerateContent?alt=sse`).
    Google,
    /// Cohere v2 chat (`POST /v2/chat`).
    Cohere,
}

impl Dialect {
    pub fn parse(s: &str) -> Option<Dialect> {
        match s.to_ascii_lowercase().as_str() {
            "openai" => Some(Dialect::Openai),
            "anthropic" => Some(Dialect::Anthropic),
            "google" | "gemini" => Some(Dialect::Google),
            "cohere" => Some(Dialect::Cohere),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Openai => "openai",
            Dialect::Anthropic => "anthropic",
            Dialect::Google => "google",
            Dialect::Cohere => "cohere",
        }
    }
}

/// Settings the request translation needs from configuration.
#[derive(Debug, Clone)]
pub struct RequestOptions {
    /// `max_tokens` for APIs that require it (Anthropic) when the client sent none.
    pub default_max_tokens: u64,
    /// The model refuses `temperature` with `top_p` (model table); `None`: read from its name.
    pub sampling_exclusive: Option<bool>,
    /// The model takes native structured outputs (model table); `None`: read from its name.
    pub structured_outputs: Option<bool>,
    /// `(min, max)` thinking budget of the model (model table): `reasoning_effort` budgets are
    /// kept inside it.
    pub thinking_budget: Option<(u64, u64)>,
    /// The most output tokens the model takes in `max_tokens` (model table), thinking included.
    pub max_output_tokens: Option<u64>,
}

impl Default for RequestOptions {
    fn default() -> Self {
        RequestOptions {
            default_max_tokens: 4096,
            sampling_exclusive: None,
            structured_outputs: None,
            thinking_budget: None,
            max_output_tokens: None,
        }
    }
}

/// A translated request.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeRequest {
    pub body: Vec<u8>,
    pub stream: bool,
    /// Request parameters the target API cannot express (dropped, sorted).
    pub dropped: Vec<String>,
    /// `response_format` emulated with a forced tool of this name (Anthropic models without
    /// structured outputs): its input is the answer's content. Give it to
    /// [`translate_response_with`] / [`stream_translator_with`].
    pub json_tool: Option<String>,
}

/// A request that cannot be translated (invalid for the target API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateError {
    pub message: String,
    pub param: Option<&'static str>,
    /// Set when the provider's answer was read but reports a failure of its own (e.g.
    /// Gemini's `MALFORMED_FUNCTION_CALL`): `upstream_invalid_output`.
    pub code: Option<&'static str>,
}

impl TranslateError {
    pub fn new(message: impl Into<String>, param: Option<&'static str>) -> Self {
        TranslateError {
            message: message.into(),
            param,
            code: None,
        }
    }

    /// The provider finished with `reason`, a failure that is not an answer.
    pub fn invalid_output(provider: &str, reason: &str, detail: Option<&str>) -> Self {
        let mut message = format!("{provider} ended the answer with {reason}");
        if let Some(d) = detail.filter(|d| !d.is_empty()) {
            message.push_str(": ");
            message.push_str(d);
        }
        TranslateError {
            message,
            param: None,
            code: Some(INVALID_OUTPUT),
        }
    }
}

/// Error code of an answer the provider itself marked as failed.
pub const INVALID_OUTPUT: &str = "upstream_invalid_output";

/// A translated non-streaming response.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiResponse {
    pub body: Vec<u8>,
    pub usage: Option<Usage>,
}

/// Turns a stream of native bytes into OpenAI SSE bytes.
pub trait StreamTranslator: Send {
    /// Feeds one chunk of the upstream body; output is appended to `out`.
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), EventTooLarge>;
    /// [`feed`](Self::feed) with a chunk the caller gives away: a relay that forwards events
    /// unchanged may hand them on without copying them.
    fn feed_bytes(&mut self, chunk: Bytes, out: &mut BytesMut) -> Result<(), EventTooLarge> {
        self.feed(&chunk, out)
    }
    /// Ends the stream; always leaves exactly one `[DONE]` behind it.
    fn finish(&mut self, end: StreamEnd, out: &mut BytesMut);
    /// Usage as reported so far (cumulative).
    fn usage(&self) -> Option<&Usage>;
    /// Tool calls and generated text so far (metrics, and the usage estimate on disconnect).
    fn stats(&self) -> &StreamStats;
    /// After the stream: the answer as a document the server keeps (a relayed Responses
    /// stream's final `response` object), once.
    fn document(&mut self) -> Option<Vec<u8>> {
        None
    }
}

impl StreamTranslator for OpenAiStreamRelay {
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), EventTooLarge> {
        OpenAiStreamRelay::feed(self, chunk, out)
    }
    fn feed_bytes(&mut self, chunk: Bytes, out: &mut BytesMut) -> Result<(), EventTooLarge> {
        OpenAiStreamRelay::feed_bytes(self, chunk, out)
    }
    fn finish(&mut self, end: StreamEnd, out: &mut BytesMut) {
        OpenAiStreamRelay::finish(self, end, out)
    }
    fn usage(&self) -> Option<&Usage> {
        OpenAiStreamRelay::usage(self)
    }
    fn stats(&self) -> &StreamStats {
        OpenAiStreamRelay::stats(self)
    }
}

/// The parts every native stream state has by the same names (`decoder`, the chunk writer `w`,
/// `usage`, and an inherent `handle`), as [`NativeEvents`] wants them.
macro_rules! native_stream_parts {
    () => {
        fn decoder(&mut self) -> &mut SseDecoder {
            &mut self.decoder
        }
        fn writer(&mut self) -> &mut ChunkWriter {
            &mut self.w
        }
        fn writer_ref(&self) -> &ChunkWriter {
            &self.w
        }
        fn handle(&mut self, data: &[u8], out: &mut BytesMut) {
            StreamState::handle(self, data, out)
        }
        fn usage(&self) -> Option<&Usage> {
            self.usage.as_ref()
        }
    };
}
pub(crate) use native_stream_parts;

/// The per-event part of a native stream translator. `feed` and `finish` (SSE framing, the
/// unterminated tail, and ending a broken stream with an error and one `[DONE]`) are shared by
/// every dialect through the blanket `StreamTranslator` impl below.
pub(crate) trait NativeEvents: Send {
    fn decoder(&mut self) -> &mut SseDecoder;
    fn writer(&mut self) -> &mut chunks::ChunkWriter;
    fn writer_ref(&self) -> &chunks::ChunkWriter;
    /// Translates one event's data.
    fn handle(&mut self, data: &[u8], out: &mut BytesMut);
    /// The upstream ended cleanly but the translator has not finished: complete the stream
    /// (true) or leave it to be reported as truncated (false).
    fn clean_end(&mut self, _out: &mut BytesMut) -> bool {
        false
    }
    /// Why a clean end without the dialect's end event is a broken stream.
    fn truncated_message(&self) -> &'static str;
    /// Events to ignore entirely.
    fn skip(_ev: &SseEvent) -> bool {
        false
    }
    fn usage(&self) -> Option<&Usage>;
}

impl<E: NativeEvents> StreamTranslator for E {
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), EventTooLarge> {
        self.decoder().push(chunk)?;
        while let Some(ev) = self.decoder().next_event() {
            if E::skip(&ev) {
                continue;
            }
            if let Some(data) = ev.data {
                self.handle(&data, out);
            }
        }
        Ok(())
    }

    fn finish(&mut self, end: StreamEnd, out: &mut BytesMut) {
        if end == StreamEnd::Clean {
            // The last event may lack its blank line; a failed stream's fragment is dropped.
            if let Some(ev) = self.decoder().finish().filter(|ev| !E::skip(ev)) {
                if let Some(data) = ev.data {
                    self.handle(&data, out);
                }
            }
        }
        if self.writer_ref().is_done() {
            return;
        }
        match end {
            StreamEnd::Clean => {
                if !self.clean_end(out) {
                    let message = self.truncated_message();
                    self.writer()
                        .error(message, "api_error", Some("upstream_stream_error"), out);
                }
            }
            StreamEnd::Failed { message, code } => {
                self.writer().error(&message, "api_error", Some(code), out)
            }
        }
    }

    fn usage(&self) -> Option<&Usage> {
        NativeEvents::usage(self)
    }

    fn stats(&self) -> &StreamStats {
        &self.writer_ref().stats
    }
}

/// Translates an OpenAI chat request into `dialect`'s native body. `model` is the upstream model.
pub fn translate_request(
    dialect: Dialect,
    req: &ChatCompletionRequest,
    opts: &RequestOptions,
) -> Result<NativeRequest, TranslateError> {
    match dialect {
        Dialect::Openai => Ok(NativeRequest {
            body: serde_json::to_vec(req).expect("request serializes"),
            stream: req.stream.unwrap_or(false),
            dropped: vec![],
            json_tool: None,
        }),
        Dialect::Anthropic => anthropic::translate_request(req, opts),
        Dialect::Google => google::translate_request(req, opts),
        Dialect::Cohere => cohere::translate_request(req, opts),
    }
}

/// Translates a native non-streaming response body into an OpenAI `chat.completion`.
pub fn translate_response(
    dialect: Dialect,
    body: &[u8],
    model: &str,
    created: u64,
) -> Result<OpenAiResponse, TranslateError> {
    translate_response_with(dialect, body, model, created, None)
}

/// As [`translate_response`], for a request whose `response_format` was emulated with the
/// forced tool `json_tool` (see [`NativeRequest::json_tool`]).
pub fn translate_response_with(
    dialect: Dialect,
    body: &[u8],
    model: &str,
    created: u64,
    json_tool: Option<&str>,
) -> Result<OpenAiResponse, TranslateError> {
    match dialect {
        Dialect::Openai => Ok(OpenAiResponse {
            body: body.to_vec(),
            usage: crate::usage::from_response_body(body),
        }),
        Dialect::Anthropic => anthropic::translate_response(body, model, created, json_tool),
        Dialect::Google => google::translate_response(body, model, created),
        Dialect::Cohere => cohere::translate_response(body, model, created),
    }
}

/// A stream translator for `dialect`. `include_usage`: the client asked for the usage chunk.
/// `max_event_bytes` bounds a single SSE event (0 = unlimited).
pub fn stream_translator(
    dialect: Dialect,
    model: &str,
    created: u64,
    include_usage: bool,
    max_event_bytes: usize,
) -> Box<dyn StreamTranslator> {
    stream_translator_with(
        dialect,
        model,
        created,
        include_usage,
        max_event_bytes,
        None,
    )
}

/// As [`stream_translator`], with the emulated `response_format` tool (see
/// [`NativeRequest::json_tool`]).
pub fn stream_translator_with(
    dialect: Dialect,
    model: &str,
    created: u64,
    include_usage: bool,
    max_event_bytes: usize,
    json_tool: Option<&str>,
) -> Box<dyn StreamTranslator> {
    match dialect {
        Dialect::Openai => Box::new(OpenAiStreamRelay::new(!include_usage, max_event_bytes)),
        Dialect::Anthropic => Box::new(
            anthropic::StreamState::new(model, created, include_usage, max_event_bytes)
                .with_json_tool(json_tool),
        ),
        Dialect::Google => Box::new(google::StreamState::new(
            model,
            created,
            include_usage,
            max_event_bytes,
        )),
        Dialect::Cohere => Box::new(cohere::StreamState::new(
            model,
            created,
            include_usage,
            max_event_bytes,
        )),
    }
}

/// Maps a native error body to OpenAI's envelope (status kept by the caller).
pub fn translate_error(dialect: Dialect, status: u16, provider: &str, body: &[u8]) -> Vec<u8> {
    #[derive(Deserialize)]
    struct Anthropic {
        error: AnthropicInner,
    }
    #[derive(Deserialize)]
    struct AnthropicInner {
        #[serde(rename = "type", default)]
        kind: Option<String>,
        message: String,
    }
    #[derive(Deserialize)]
    struct Google {
        error: GoogleInner,
    }
    #[derive(Deserialize)]
    struct GoogleInner {
        message: String,
        #[serde(default)]
        status: Option<String>,
    }
    #[derive(Deserialize)]
    struct Cohere {
        message: String,
    }
    let kind = error_type_for_status(status);
    let (message, code) = match dialect {
        Dialect::Anthropic => match serde_json::from_slice::<Anthropic>(body) {
            Ok(e) => (e.error.message, e.error.kind),
            Err(_) => (fallback_message(provider, status, body), None),
        },
        Dialect::Google => match serde_json::from_slice::<Google>(body) {
            Ok(e) => (e.error.message, e.error.status),
            Err(_) => (fallback_message(provider, status, body), None),
        },
        Dialect::Cohere => match serde_json::from_slice::<Cohere>(body) {
            Ok(e) => (e.message, None),
            Err(_) => (fallback_message(provider, status, body), None),
        },
        Dialect::Openai => {
            if ErrorEnvelope::is_envelope(body) {
                return body.to_vec();
            }
            (fallback_message(provider, status, body), None)
        }
    };
    let code = code.map(|c| c.to_ascii_lowercase());
    ErrorEnvelope::new(
        message,
        kind,
        None,
        code.as_deref().or(Some("upstream_error")),
    )
    .to_bytes()
}

fn fallback_message(provider: &str, status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return format!("provider {provider} returned HTTP {status}");
    }
    let mut t: String = text.chars().take(2000).collect();
    if t.len() < text.len() {
        t.push_str("...");
    }
    format!("provider {provider} returned HTTP {status}: {t}")
}

// ---- helpers shared by the dialects ------------------------------------------------------

/// The text of an OpenAI message `content`: a string, or the `text` parts of an array joined.
pub(crate) fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// `data:<mime>;base64,<data>` -> (mime, data).
pub(crate) fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    Some((
        if mime.is_empty() {
            "application/octet-stream"
        } else {
            mime
        },
        data,
    ))
}

/// A tool-call id every provider accepts (at most 40 characters of `[A-Za-z0-9_-]`), so a
/// history can move between providers: a valid id as it is, another one as a stable hash of
/// itself, a missing one from `seed` (the response id: unique across turns) and its position.
pub(crate) fn portable_call_id(id: Option<&str>, seed: &str, index: usize) -> String {
    match id.filter(|i| !i.is_empty()) {
        Some(i) if crate::reasoning::valid_id(i) => i.to_string(),
        Some(i) => format!("call_{:016x}", fnv1a(i.as_bytes())),
        None => {
            let s: String = seed
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(28)
                .collect();
            format!("call_{s}_{index}")
        }
    }
}

/// FNV-1a: a stable, dependency-free hash for ids (the same input gives the same id in every
/// process and test).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Tools a dialect cannot take (anything but `function`: OpenAI's hosted tools, `custom`), as
/// names for `x-gateway-dropped-params` (`tools.<type>`), never dropped silently.
pub(crate) fn non_function_tools(req: &crate::openai::ChatCompletionRequest) -> Vec<String> {
    req.tools
        .iter()
        .flatten()
        .filter(|t| t.function.is_none())
        .map(|t| format!("tools.{}", t.kind))
        .collect()
}

/// [`inline_file`] of message `i`'s part, or the error every dialect gives for it.
pub(crate) fn file_part(part: &Value, i: usize) -> Result<(String, String), TranslateError> {
    inline_file(part).ok_or_else(|| {
        TranslateError::new(
            format!("messages[{i}]: file parts need file_data (a data: URL or base64 with a .pdf filename); file ids cannot be resolved"),
            Some("messages"),
        )
    })
}

/// An OpenAI `file` content part given inline (`file.file_data` as a `data:` URL, or plain
/// base64 with `filename` naming a PDF): `(media type, base64 data)`. Uploaded-file ids cannot
/// be resolved by the gateway and give `None`.
pub(crate) fn inline_file(part: &Value) -> Option<(String, String)> {
    let f = part.get("file")?;
    let data = f.get("file_data")?.as_str()?;
    if let Some((mime, b64)) = parse_data_url(data) {
        return Some((mime.to_string(), b64.to_string()));
    }
    let name = f.get("filename").and_then(Value::as_str).unwrap_or("");
    name.to_ascii_lowercase()
        .ends_with(".pdf")
        .then(|| ("application/pdf".to_string(), data.to_string()))
}

/// An OpenAI `input_audio` part: `(media type, base64 data)`.
pub(crate) fn inline_audio(part: &Value) -> Option<(String, String)> {
    let a = part.get("input_audio")?;
    let data = a.get("data")?.as_str()?;
    let mime = match a.get("format").and_then(Value::as_str).unwrap_or("wav") {
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        other => return Some((format!("audio/{other}"), data.to_string())),
    };
    Some((mime.to_string(), data.to_string()))
}

/// The image URL of an OpenAI `image_url` content part.
pub(crate) fn image_url(part: &Value) -> Option<&str> {
    match part.get("image_url")? {
        Value::String(s) => Some(s),
        v => v.get("url")?.as_str(),
    }
}

/// Tool call arguments (a JSON string) as an object; invalid or non-object JSON becomes `{}`
/// with the raw text kept under `"_raw"` so nothing is lost silently.
pub(crate) fn arguments_object(args: Option<&str>) -> Value {
    let raw = args.unwrap_or("").trim();
    if raw.is_empty() {
        return Value::Object(Default::default());
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(v @ Value::Object(_)) => v,
        _ => serde_json::json!({ "_raw": raw }),
    }
}

/// `stop`: a string or an array of strings.
pub(crate) fn stop_list(stop: Option<&Value>) -> Option<Vec<String>> {
    match stop? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
        ),
        _ => None,
    }
}

/// Sorted, de-duplicated list of dropped parameters.
pub(crate) fn finish_dropped(mut d: Vec<String>) -> Vec<String> {
    d.sort();
    d.dedup();
    d
}

#[cfg(test)]
mod tests;
