//! Writes OpenAI `chat.completion.chunk` SSE events; shared by every dialect's stream translator
//! so all of them produce the same shapes (role first, tool-call deltas with `index`, a finish
//! chunk, the usage-only chunk, one `[DONE]`).

use bytes::BytesMut;
use serde::Serialize;
use serde_json::Value;

use crate::openai::ErrorEnvelope;
use crate::sse;
use crate::usage::{StreamStats, Usage};

#[derive(Debug)]
pub struct ChunkWriter {
    pub id: String,
    pub model: String,
    pub created: u64,
    /// Whether the client asked for the usage-only chunk (`stream_options.include_usage`).
    include_usage: bool,
    role_sent: bool,
    done: bool,
    /// Tool calls and text written so far.
    pub stats: StreamStats,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a Usage>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: &'a Value,
    finish_reason: Option<&'a str>,
}

impl ChunkWriter {
    pub fn new(
        id: impl Into<String>,
        model: impl Into<String>,
        created: u64,
        include_usage: bool,
    ) -> Self {
        ChunkWriter {
            id: id.into(),
            model: model.into(),
            created,
            include_usage,
            role_sent: false,
            done: false,
            stats: StreamStats::default(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    fn write(&mut self, delta: &Value, finish: Option<&str>, out: &mut BytesMut) {
        if self.done {
            return;
        }
        let choice = [ChunkChoice {
            index: 0,
            delta,
            finish_reason: finish,
        }];
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: &choice,
            usage: None,
        };
        let payload = serde_json::to_vec(&chunk).expect("chunk serializes");
        sse::encode_data(&payload, out);
    }

    /// The first chunk: `{"role":"assistant","content":""}`. Sent once, before any other delta.
    pub fn role(&mut self, out: &mut BytesMut) {
        if !self.role_sent {
            self.role_sent = true;
            self.write(
                &serde_json::json!({"role": "assistant", "content": ""}),
                None,
                out,
            );
        }
    }

    pub fn content(&mut self, text: &str, out: &mut BytesMut) {
        if text.is_empty() {
            return;
        }
        self.role(out);
        self.stats.text_bytes += text.len() as u64;
        self.write(&serde_json::json!({ "content": text }), None, out);
    }

    pub fn reasoning(&mut self, text: &str, out: &mut BytesMut) {
        if text.is_empty() {
            return;
        }
        self.role(out);
        self.stats.text_bytes += text.len() as u64;
        self.write(&serde_json::json!({ "reasoning_content": text }), None, out);
    }

    /// One complete reasoning-state block (`{"type":"thinking","thinking","signature"}` or
    /// `{"type":"redacted_thinking","data"}`), in the delta as `thinking_blocks` (LiteLLM's
    /// name): a client that keeps it can send the turn back as the provider requires.
    pub fn thinking_block(&mut self, block: Value, out: &mut BytesMut) {
        self.role(out);
        self.stats.reasoning.thinking_blocks.push(block.clone());
        self.write(
            &serde_json::json!({ "thinking_blocks": [block] }),
            None,
            out,
        );
    }

    /// Opens tool call `index` (id, name, empty arguments).
    pub fn tool_call_start(&mut self, index: u32, id: &str, name: &str, out: &mut BytesMut) {
        self.tool_call_start_with(index, id, name, &serde_json::Map::new(), out);
    }

    /// As [`tool_call_start`](Self::tool_call_start), with extra fields on the call (Gemini's
    /// `extra_content` with its thought signature).
    pub fn tool_call_start_with(
        &mut self,
        index: u32,
        id: &str,
        name: &str,
        extra: &serde_json::Map<String, Value>,
        out: &mut BytesMut,
    ) {
        self.role(out);
        self.stats.tool_calls.push(name.to_string());
        self.stats
            .reasoning
            .calls
            .push((id.to_string(), extra.get("extra_content").cloned()));
        let mut call = serde_json::json!({"index": index, "id": id, "type": "function",
            "function": {"name": name, "arguments": ""}});
        for (k, v) in extra {
            call[k] = v.clone();
        }
        let delta = serde_json::json!({ "tool_calls": [call] });
        self.write(&delta, None, out);
    }

    pub fn tool_call_args(&mut self, index: u32, args: &str, out: &mut BytesMut) {
        if args.is_empty() {
            return;
        }
        self.stats.text_bytes += args.len() as u64;
        self.role(out);
        let delta =
            serde_json::json!({"tool_calls": [{"index": index, "function": {"arguments": args}}]});
        self.write(&delta, None, out);
    }

    pub fn finish(&mut self, reason: &str, out: &mut BytesMut) {
        self.role(out);
        self.write(&serde_json::json!({}), Some(reason), out);
    }

    /// The usage-only chunk (only if the client asked for it), then `[DONE]`.
    pub fn end(&mut self, usage: Option<&Usage>, out: &mut BytesMut) {
        if self.done {
            return;
        }
        if let (true, Some(u)) = (self.include_usage, usage) {
            let chunk = Chunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: &[],
                usage: Some(u),
            };
            sse::encode_data(&serde_json::to_vec(&chunk).expect("chunk serializes"), out);
        }
        out.extend_from_slice(sse::DONE);
        self.done = true;
    }

    /// An error event in OpenAI's envelope, then `[DONE]`.
    pub fn error(&mut self, message: &str, kind: &str, code: Option<&str>, out: &mut BytesMut) {
        if self.done {
            return;
        }
        let err = ErrorEnvelope::new(message, kind, None, code);
        sse::encode_data(&err.to_bytes(), out);
        out.extend_from_slice(sse::DONE);
        self.done = true;
    }
}
