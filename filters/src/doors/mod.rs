//! Front doors: the client APIs the gateway serves, each decoded into the canonical exchange and
//! the answer encoded back.
//!
//! The canonical exchange is a Chat Completions request and its answer (a `chat.completion`, or
//! its chunk stream), with the gateway's carriers for what Chat Completions has no field for
//! (`thinking_blocks`, `extra_content.google`, `cache_control` on parts). Every dialect already
//! translates from and to it, so a door is written once and reaches every provider: doors plus
//! dialects is N + M code, not N x M. When the door's API is the provider's own (Messages to an
//! Anthropic provider) nothing is translated: the request is relayed with its model rewritten.

pub mod messages;
pub mod responses;

use bytes::BytesMut;

use serde::Deserialize;
use serde_json::Value;

use crate::dialects::StreamTranslator;
use crate::openai::ToolCall;
use crate::stream_relay::StreamEnd;
use crate::usage::{StreamStats, Usage};

/// The API a request came in through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Door {
    /// OpenAI Chat Completions (and the other OpenAI endpoints): the canonical API itself.
    #[default]
    Chat,
    /// Anthropic Messages (`/v1/messages`).
    Messages,
    /// OpenAI Responses (`/v1/responses`).
    Responses,
}

impl Door {
    pub fn name(self) -> &'static str {
        match self {
            Door::Chat => "chat",
            Door::Messages => "messages",
            Door::Responses => "responses",
        }
    }

    /// The dialect that speaks this door's API natively: its providers get the client's
    /// request as it came (model rewritten), not a translation.
    pub fn native_dialect(self) -> Option<crate::dialects::Dialect> {
        match self {
            // Chat Completions to an OpenAI-compatible provider is the canonical path itself.
            Door::Chat => None,
            Door::Messages => Some(crate::dialects::Dialect::Anthropic),
            // Relayed to providers configured as OpenAI Responses servers, whatever the dialect
            // of their chat endpoint (the server decides, per provider).
            Door::Responses => None,
        }
    }

    /// The client's request in this door's API, rewritten for a relay to its native dialect:
    /// the routed model, an alias's defaults and system prefix. Returns the body and whether it
    /// streams.
    pub fn relay_body(
        self,
        body: &[u8],
        model: &str,
        defaults: &serde_json::Map<String, Value>,
        system_prefix: Option<&str>,
    ) -> Result<(Vec<u8>, bool), DecodeError> {
        match self {
            Door::Chat => Err(DecodeError::new("the chat door does not relay", None)),
            Door::Messages => messages::relay_body(body, model, defaults, system_prefix),
            Door::Responses => responses::relay_body(body, model, defaults, system_prefix),
        }
    }

    /// The observer of a relayed stream (passed unchanged; usage and tool calls read).
    pub fn relay_observer(self, max_event_bytes: usize) -> Box<dyn StreamTranslator> {
        match self {
            // Never relayed (see `native_dialect`); an OpenAI relay would be the same thing.
            Door::Chat => Box::new(crate::stream_relay::OpenAiStreamRelay::new(
                false,
                max_event_bytes,
            )),
            Door::Messages => Box::new(messages::PassthroughObserver::new(max_event_bytes)),
            Door::Responses => Box::new(responses::RelayObserver::new(max_event_bytes)),
        }
    }

    /// Usage and tool-call names of a relayed whole answer.
    pub fn relay_usage(self, body: &[u8]) -> (Option<Usage>, Vec<String>) {
        match self {
            Door::Chat => (
                crate::usage::from_response_body(body),
                crate::usage::tool_calls_from_body(body),
            ),
            Door::Messages => (
                messages::usage_of_message(body),
                messages::tool_calls_of_message(body),
            ),
            Door::Responses => responses::usage_of_response(body),
        }
    }

    /// A canonical `chat.completion` in this door's API; `None` when it is the canonical API.
    /// `meta`: the Responses door's ids and sealing.
    pub fn encode_response(
        self,
        canonical: &[u8],
        meta: Option<&responses::ResponseMeta>,
    ) -> Option<Result<responses::Encoded, DecodeError>> {
        match self {
            Door::Chat => None,
            Door::Messages => {
                Some(
                    messages::encode_response(canonical).map(|body| responses::Encoded {
                        body,
                        document: None,
                    }),
                )
            }
            Door::Responses => Some(responses::encode_response(
                canonical,
                meta.unwrap_or(&responses::ResponseMeta::default()),
            )),
        }
    }

    /// The encoder of a canonical chunk stream into this door's; `None` for the canonical API.
    /// `model` is named when the stream names none.
    pub fn stream_encoder(
        self,
        model: &str,
        meta: Option<&responses::ResponseMeta>,
    ) -> Option<Box<dyn StreamEncoder>> {
        match self {
            Door::Chat => None,
            Door::Messages => Some(Box::new(messages::MessagesEncoder::new(model))),
            Door::Responses => Some(Box::new(responses::ResponsesEncoder::new(
                meta.cloned().unwrap_or_default(),
                model,
            ))),
        }
    }

    /// An error (status and OpenAI envelope) in this door's shape and status; `None` for the
    /// canonical API.
    pub fn encode_error(self, status: u16, envelope: &[u8]) -> Option<(u16, Vec<u8>)> {
        match self {
            Door::Chat => None,
            Door::Messages => Some(messages::encode_error(status, envelope)),
            // OpenAI's envelope is the canonical one.
            Door::Responses => None,
        }
    }
}

/// A request the door could not decode: a 400 in the door's error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub message: String,
    pub param: Option<&'static str>,
    /// An error code more precise than the door's generic one.
    pub code: Option<&'static str>,
}

impl DecodeError {
    pub fn new(message: impl Into<String>, param: Option<&'static str>) -> Self {
        DecodeError {
            message: message.into(),
            param,
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

/// Encodes a canonical chunk stream into a door's stream, as it arrives.
pub trait StreamEncoder: Send {
    /// Feeds canonical SSE bytes (any split); the door's events are appended to `out`.
    fn feed(&mut self, canonical: &[u8], out: &mut BytesMut);
    /// A keep-alive in the door's terms (an SSE comment, Anthropic's `ping`).
    fn keepalive(&self, out: &mut BytesMut);
    /// After the last event: the answer as a document the server keeps (the Responses door's
    /// `response` object), once.
    fn document(&mut self) -> Option<Vec<u8>> {
        None
    }
}

/// A stream translator followed by a door's encoder: the dialect's stream in, the door's out.
pub struct EncodedStream {
    inner: Box<dyn StreamTranslator>,
    encoder: Box<dyn StreamEncoder>,
    mid: BytesMut,
}

impl EncodedStream {
    pub fn new(inner: Box<dyn StreamTranslator>, encoder: Box<dyn StreamEncoder>) -> Self {
        EncodedStream {
            inner,
            encoder,
            mid: BytesMut::with_capacity(4096),
        }
    }
}

impl StreamTranslator for EncodedStream {
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), crate::sse::EventTooLarge> {
        let r = self.inner.feed(chunk, &mut self.mid);
        if !self.mid.is_empty() {
            self.encoder.feed(&self.mid, out);
            self.mid.clear();
        }
        r
    }

    fn finish(&mut self, end: StreamEnd, out: &mut BytesMut) {
        self.inner.finish(end, &mut self.mid);
        self.encoder.feed(&self.mid, out);
        self.mid.clear();
    }

    fn usage(&self) -> Option<&Usage> {
        self.inner.usage()
    }

    fn stats(&self) -> &StreamStats {
        self.inner.stats()
    }

    fn document(&mut self) -> Option<Vec<u8>> {
        self.encoder.document()
    }
}

/// One event of the canonical stream, as a door's encoder reads it.
pub(crate) enum Canonical<'a> {
    /// A keep-alive comment.
    Keepalive,
    /// `[DONE]`.
    Done,
    /// An error event (`{"error": {...}}`): its message and code.
    Error {
        message: String,
        code: Option<String>,
    },
    Chunk(LeanChunk<'a>),
    /// Not a chunk the encoders read.
    Skip,
}

/// Classifies a canonical event (the gateway's own output: complete, bounded events).
pub(crate) fn classify(ev: &crate::sse::SseEvent) -> Canonical<'_> {
    let Some(data) = ev.data.as_deref() else {
        return Canonical::Keepalive;
    };
    if ev.is_done() {
        return Canonical::Done;
    }
    let Ok(c) = serde_json::from_slice::<LeanChunk<'_>>(data) else {
        return Canonical::Skip;
    };
    match &c.error {
        Some(e) => Canonical::Error {
            message: e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_string(),
            code: e.get("code").and_then(Value::as_str).map(str::to_string),
        },
        None => Canonical::Chunk(c),
    }
}

/// What the encoder reads of a canonical chunk (or error event), borrowing its strings: no
/// catch-all maps, so the per-token parse stays cheap.
#[derive(Deserialize)]
pub(crate) struct LeanChunk<'a> {
    #[serde(default, borrow)]
    pub(crate) id: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    pub(crate) model: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    pub(crate) choices: Vec<LeanChoice<'a>>,
    #[serde(default)]
    pub(crate) usage: Option<Usage>,
    #[serde(default)]
    pub(crate) error: Option<Value>,
}

#[derive(Deserialize)]
pub(crate) struct LeanChoice<'a> {
    #[serde(default, borrow)]
    pub(crate) delta: LeanDelta<'a>,
    #[serde(default)]
    pub(crate) finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
pub(crate) struct LeanDelta<'a> {
    #[serde(default, borrow)]
    pub(crate) content: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(crate) reasoning_content: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    pub(crate) tool_calls: Option<Vec<ToolCall>>,
    #[serde(default)]
    pub(crate) thinking_blocks: Option<Vec<Value>>,
}
