//! The pure parts of the gateway's server-side tool loop (MCP): deciding whether a model reply
//! continues the loop, building the conversation for the next round, and relaying each round of
//! a stream to the client as one continuous OpenAI stream.
//!
//! Rounds of a streamed loop are joined so that a client sees one well-formed stream:
//! - content and tool-call chunks of every round pass through as they arrive (UIs show progress);
//! - `[DONE]` and the per-round usage-only chunks are held back; the loop ends with one summed
//!   usage chunk (if the client asked for usage) and exactly one `[DONE]`;
//! - the `finish_reason` of a round the gateway continues is nulled, so a client does not
//!   mistake an intermediate round for the end of the answer;
//! - tool-call `index`es of later rounds are shifted past those of earlier rounds, so a client
//!   that accumulates deltas by index never merges two different calls.

use std::collections::HashSet;

use bytes::BytesMut;
use memchr::memmem;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::openai::ToolCall;
use crate::sse::{self, EventTooLarge, SseDecoder, SseEvent};
use crate::usage::{self, Usage};

/// Tools the gateway runs are offered to the model under this prefix.
pub const GATEWAY_TOOL_PREFIX: &str = "mcp_";

/// Prefix of the A2A agents' skills the gateway runs (`a2a_<agent>_<skill>`).
pub const A2A_TOOL_PREFIX: &str = "a2a_";

/// Most tool calls one streamed round may carry: a provider's `index` sizes the accumulator, so
/// it must be bounded (a hostile or broken upstream could send `"index": 4000000000`).
pub const MAX_CALLS_PER_ROUND: usize = 128;

/// Which tool names the gateway runs: `mcp_` names the client did not define itself.
#[derive(Debug, Clone, Default)]
pub struct ToolOwnership {
    client_tools: HashSet<String>,
}

impl ToolOwnership {
    /// `client_tools`: function names in the client's own `tools` (they shadow gateway tools).
    pub fn new(client_tools: impl IntoIterator<Item = String>) -> Self {
        ToolOwnership {
            client_tools: client_tools.into_iter().collect(),
        }
    }

    pub fn is_gateway_tool(&self, name: &str) -> bool {
        (name.starts_with(GATEWAY_TOOL_PREFIX) || name.starts_with(A2A_TOOL_PREFIX))
            && !self.client_tools.contains(name)
    }

    pub fn is_client_tool(&self, name: &str) -> bool {
        self.client_tools.contains(name)
    }
}

/// Function names of a request's `tools` array (OpenAI format).
pub fn client_tool_names(tools: &[Value]) -> Vec<String> {
    tools
        .iter()
        .filter_map(|t| t.get("function")?.get("name")?.as_str().map(str::to_string))
        .collect()
}

/// A tool call the gateway is to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCall {
    pub id: String,
    pub name: String,
    /// JSON text as the model produced it (may be empty or invalid; the runner reports that).
    pub arguments: String,
    /// The call's other fields, sent back with it (Gemini's thought signature travels in
    /// `extra_content`).
    pub carried: Map<String, Value>,
}

/// What to do after a model reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every call is a gateway tool: run them and call the model again.
    Continue(Vec<PendingCall>),
    /// The reply would continue, but this was the last allowed round.
    LimitReached,
    /// The answer for the client (text, client tool calls, or a truncated reply).
    Finish,
}

/// Decides from a complete reply. Continues only when every tool call is the gateway's: a reply
/// that also calls a client tool goes back to the client, which alone can answer it. A reply
/// cut by `length` (arguments may be truncated), a content filter, or with no finish reason at
/// all is never continued.
pub fn decide(
    tool_calls: &[ToolCall],
    finish_reason: Option<&str>,
    owner: &ToolOwnership,
    last_round: bool,
) -> Decision {
    // No finish reason: the reply was cut off (its arguments may be too).
    if tool_calls.is_empty()
        || tool_calls.len() > MAX_CALLS_PER_ROUND
        || matches!(finish_reason, None | Some("length" | "content_filter"))
    {
        return Decision::Finish;
    }
    let mut calls = Vec::with_capacity(tool_calls.len());
    for (i, c) in tool_calls.iter().enumerate() {
        let Some(f) = &c.function else {
            return Decision::Finish;
        };
        let name = f.name.as_deref().unwrap_or("");
        if !owner.is_gateway_tool(name) {
            return Decision::Finish;
        }
        calls.push(PendingCall {
            id: c.id.clone().unwrap_or_else(|| format!("call_gw_{i}")),
            name: name.to_string(),
            arguments: f.arguments.clone().unwrap_or_default(),
            carried: c.extra.clone(),
        });
    }
    if last_round {
        Decision::LimitReached
    } else {
        Decision::Continue(calls)
    }
}

/// Fields of a reply's message that go back with it: reasoning state (Anthropic's signed
/// thinking, as the dialects carry it) must precede its tool calls in the next request.
pub const CARRIED_FIELDS: &[&str] = &[
    "reasoning_content",
    "reasoning_signature",
    "thinking_blocks",
];

/// The assistant message that goes back into the conversation for the next round. `carried`:
/// [`CARRIED_FIELDS`] of the reply's message.
pub fn assistant_message(
    content: Option<&str>,
    calls: &[PendingCall],
    carried: &Map<String, Value>,
) -> Value {
    let tool_calls: Vec<Value> = calls
        .iter()
        .map(|c| {
            let mut call = json!({
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            });
            for (k, v) in &c.carried {
                call[k] = v.clone();
            }
            call
        })
        .collect();
    let mut m = json!({
        "role": "assistant",
        "content": content.filter(|c| !c.is_empty()),
        "tool_calls": tool_calls,
    });
    for (k, v) in carried {
        m[k] = v.clone();
    }
    m
}

/// One `tool` message answering `call`.
pub fn tool_message(call: &PendingCall, content: &str) -> Value {
    json!({"role": "tool", "tool_call_id": call.id, "content": content})
}

/// The parts of a non-streaming `chat.completion` the loop needs, read leniently (any
/// OpenAI-compatible server's body, whatever else it carries).
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// [`CARRIED_FIELDS`] present in the message.
    pub carried: Map<String, Value>,
}

/// Reads a `chat.completion` body. `Err` when it is not one (no `choices[0].message`).
pub fn parse_reply(body: &[u8]) -> Result<Reply, String> {
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        choices: Vec<ChoiceIn>,
        #[serde(default)]
        usage: Option<Usage>,
    }
    #[derive(Deserialize)]
    struct ChoiceIn {
        message: MessageIn,
        #[serde(default)]
        finish_reason: Option<String>,
    }
    #[derive(Deserialize)]
    struct MessageIn {
        #[serde(default)]
        content: Option<Value>,
        #[serde(default)]
        tool_calls: Option<Vec<ToolCall>>,
        #[serde(flatten)]
        rest: Map<String, Value>,
    }
    let b: Body = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let choice = b
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| "the response has no choices".to_string())?;
    let content = match choice.message.content {
        Some(Value::String(s)) => Some(s),
        Some(Value::Array(parts)) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
        ),
        _ => None,
    };
    let mut rest = choice.message.rest;
    let mut carried: Map<String, Value> = CARRIED_FIELDS
        .iter()
        .filter_map(|k| Some((k.to_string(), rest.remove(*k)?)))
        .collect();
    // Reasoning text goes back only with what makes it replayable, as in streamed rounds (some
    // OpenAI-compatible servers refuse `reasoning_content` in input messages).
    if !carried.contains_key("thinking_blocks") && !carried.contains_key("reasoning_signature") {
        carried.remove("reasoning_content");
    }
    Ok(Reply {
        content,
        carried,
        tool_calls: choice.message.tool_calls.unwrap_or_default(),
        finish_reason: choice.finish_reason,
        usage: b.usage,
    })
}

/// The final non-streaming body: the last reply with the usage of all rounds (`total_usage`:
/// `None` for a single round) and, when the reply goes back to the client with both kinds of
/// calls, only the client's tool calls. `Ok(None)`: nothing to change, relay the body as is.
pub fn finalize_body(
    body: &[u8],
    total_usage: Option<&Usage>,
    owner: &ToolOwnership,
) -> Result<Option<Vec<u8>>, String> {
    let mut v: Map<String, Value> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut changed = false;
    if let Some(u) = total_usage {
        v.insert(
            "usage".into(),
            serde_json::to_value(u).map_err(|e| e.to_string())?,
        );
        changed = true;
    }
    if let Some(Value::Array(choices)) = v.get_mut("choices") {
        for c in choices {
            let Some(Value::Array(calls)) = c.pointer_mut("/message/tool_calls") else {
                continue;
            };
            let name = |tc: &Value| {
                tc.pointer("/function/name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_default()
            };
            let has_client_call = calls.iter().any(|tc| !owner.is_gateway_tool(&name(tc)));
            let has_gateway_call = calls.iter().any(|tc| owner.is_gateway_tool(&name(tc)));
            if has_client_call && has_gateway_call {
                calls.retain(|tc| !owner.is_gateway_tool(&name(tc)));
                changed = true;
            }
        }
    }
    if !changed {
        return Ok(None);
    }
    serde_json::to_vec(&v).map(Some).map_err(|e| e.to_string())
}

/// A whole `chat.completion` as the stream it would have been: one chunk with the message as
/// its delta (tool calls indexed), a usage-only chunk, `[DONE]`. For providers that answer a
/// streamed round with plain JSON.
pub fn completion_as_sse(body: &[u8]) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let choice = v.get("choices")?.get(0)?;
    let mut delta = choice.get("message")?.clone();
    if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
        for (i, c) in calls.iter_mut().enumerate() {
            // Whatever the upstream sent: never index into a non-object.
            if let Some(o) = c.as_object_mut() {
                o.insert("index".into(), json!(i));
            }
        }
    }
    let head = |choices: Value, usage: Option<&Value>| {
        let mut c = json!({
            "id": v.get("id").cloned().unwrap_or(Value::Null),
            "object": "chat.completion.chunk",
            "created": v.get("created").cloned().unwrap_or(json!(0)),
            "model": v.get("model").cloned().unwrap_or(Value::Null),
            "choices": choices,
        });
        if let Some(u) = usage {
            c["usage"] = u.clone();
        }
        c
    };
    let mut out = BytesMut::new();
    let chunk = head(
        json!([{"index": 0, "delta": delta, "finish_reason": choice.get("finish_reason")}]),
        None,
    );
    sse::encode_data(&serde_json::to_vec(&chunk).ok()?, &mut out);
    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
        sse::encode_data(
            &serde_json::to_vec(&head(json!([]), Some(u))).ok()?,
            &mut out,
        );
    }
    out.extend_from_slice(sse::DONE);
    Some(out.to_vec())
}

/// Removes, from the client's history, gateway tool calls that no `tool` message answers.
///
/// A streaming client sees the `mcp_` tool calls of every round (as progress) and may echo them
/// back in its next request's assistant message; their answers were never in its history, and
/// providers reject a tool call without a result.
/// Returns whether anything was removed.
pub fn drop_unanswered_gateway_calls(messages: &mut [Value], owner: &ToolOwnership) -> bool {
    let answered: HashSet<String> = messages
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("tool"))
        .filter_map(|m| m.get("tool_call_id")?.as_str().map(str::to_string))
        .collect();
    let mut changed = false;
    for m in messages.iter_mut() {
        if m.get("role").and_then(Value::as_str) != Some("assistant") {
            continue;
        }
        let Some(obj) = m.as_object_mut() else {
            continue;
        };
        let Some(Value::Array(calls)) = obj.get_mut("tool_calls") else {
            continue;
        };
        let before = calls.len();
        calls.retain(|c| {
            let name = c.pointer("/function/name").and_then(Value::as_str);
            let id = c.get("id").and_then(Value::as_str).unwrap_or("");
            !name.is_some_and(|n| owner.is_gateway_tool(n)) || answered.contains(id)
        });
        changed |= calls.len() != before;
        if calls.is_empty() {
            obj.remove("tool_calls");
        }
    }
    changed
}

/// How a streamed round ended, as seen in its OpenAI events.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundSummary {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// The round's stream carried an error event (it failed mid-stream).
    pub failed: bool,
    /// More than [`MAX_CALLS_PER_ROUND`] tool calls: the reply goes to the client as it is.
    pub too_many_calls: bool,
    /// Reasoning state seen in the stream ([`CARRIED_FIELDS`]: `reasoning_content`,
    /// `thinking_blocks`), to send back with the round's assistant message.
    pub carried: Map<String, Value>,
}

/// Relays one round's OpenAI SSE stream (the output of the dialect relay or translator) into
/// the client's continuous stream, and accumulates the round's assistant message.
#[derive(Debug)]
pub struct RoundRelay {
    decoder: SseDecoder,
    owner: ToolOwnership,
    /// Added to every tool-call index of this round.
    index_offset: u32,
    /// This round may not continue (limit): its finish_reason passes unchanged.
    last_round: bool,
    content: String,
    reasoning: String,
    thinking_blocks: Vec<Value>,
    calls: Vec<ToolCall>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    failed: bool,
    done: bool,
    /// A tool-call index beyond [`MAX_CALLS_PER_ROUND`] was seen.
    overflow: bool,
}

#[derive(Deserialize)]
struct ChunkIn {
    #[serde(default)]
    choices: Vec<ChunkChoiceIn>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ChunkChoiceIn {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<DeltaIn>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct DeltaIn {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    thinking_blocks: Option<Vec<Value>>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
}

static TOOL_CALLS_KEY: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"tool_calls\""));

impl RoundRelay {
    pub fn new(owner: ToolOwnership, index_offset: u32, last_round: bool) -> Self {
        RoundRelay {
            decoder: SseDecoder::new(),
            owner,
            index_offset,
            last_round,
            content: String::new(),
            reasoning: String::new(),
            thinking_blocks: Vec::new(),
            calls: Vec::new(),
            finish_reason: None,
            usage: None,
            failed: false,
            done: false,
            overflow: false,
        }
    }

    /// Feeds bytes of the round's OpenAI stream; what the client should see goes to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), EventTooLarge> {
        self.decoder.push(chunk)?;
        while let Some(ev) = self.decoder.next_event() {
            self.handle(ev, out);
        }
        Ok(())
    }

    /// Ends the round (the translator's output is complete) and reports what it said.
    pub fn finish(mut self, out: &mut BytesMut) -> RoundSummary {
        if let Some(ev) = self.decoder.finish() {
            self.handle(ev, out);
        }
        // Reasoning text goes back only with the blocks that make it replayable (some
        // OpenAI-compatible servers refuse `reasoning_content` in input messages).
        let mut carried = Map::new();
        if !self.thinking_blocks.is_empty() && !self.reasoning.is_empty() {
            carried.insert("reasoning_content".into(), Value::String(self.reasoning));
        }
        if !self.thinking_blocks.is_empty() {
            carried.insert("thinking_blocks".into(), Value::Array(self.thinking_blocks));
        }
        RoundSummary {
            content: self.content,
            tool_calls: self.calls,
            finish_reason: self.finish_reason,
            usage: self.usage,
            failed: self.failed,
            too_many_calls: self.overflow,
            carried,
        }
    }

    fn handle(&mut self, ev: SseEvent, out: &mut BytesMut) {
        if self.done {
            return;
        }
        let Some(data) = ev.data.as_deref() else {
            // Comments and keep-alives pass through.
            out.extend_from_slice(&ev.raw);
            return;
        };
        if ev.is_done() {
            // Held back: the loop sends the only `[DONE]` at the very end.
            self.done = true;
            return;
        }
        if let Some(cu) = usage::from_chunk(data) {
            match &mut self.usage {
                Some(u) => *u = cu.usage,
                None => self.usage = Some(cu.usage),
            }
            if cu.usage_only {
                // Replaced by one summed usage chunk at the end of the loop.
                return;
            }
        }
        let Ok(chunk) = serde_json::from_slice::<ChunkIn>(data) else {
            out.extend_from_slice(&ev.raw);
            return;
        };
        if chunk.error.is_some() {
            self.failed = true;
            out.extend_from_slice(&ev.raw);
            return;
        }
        let mut rewrite_finish = false;
        let mut has_calls = false;
        for choice in chunk.choices.iter().filter(|c| c.index == 0) {
            if let Some(d) = &choice.delta {
                if let Some(t) = &d.content {
                    self.content.push_str(t);
                }
                if let Some(t) = &d.reasoning_content {
                    self.reasoning.push_str(t);
                }
                if let Some(b) = &d.thinking_blocks {
                    self.thinking_blocks.extend(b.iter().cloned());
                }
                if let Some(calls) = &d.tool_calls {
                    has_calls = true;
                    for c in calls {
                        self.accumulate(c);
                    }
                }
            }
            if let Some(f) = &choice.finish_reason {
                self.finish_reason = Some(f.clone());
                rewrite_finish = !self.last_round
                    && !self.overflow
                    && matches!(
                        decide(&self.calls, Some(f), &self.owner, false),
                        Decision::Continue(_)
                    );
            }
        }
        let shift = has_calls && self.index_offset > 0;
        if !rewrite_finish && !shift {
            out.extend_from_slice(&ev.raw);
            return;
        }
        // Rare (tool-call chunks of later rounds, one finish chunk per round): edit the JSON.
        match self.rewrite(data, rewrite_finish, shift) {
            Some(bytes) => sse::encode_data(&bytes, out),
            None => out.extend_from_slice(&ev.raw),
        }
    }

    fn accumulate(&mut self, delta: &ToolCall) {
        let idx = delta.index.unwrap_or(self.calls.len() as u32) as usize;
        if idx >= MAX_CALLS_PER_ROUND {
            // Relayed as is, but never run: the round cannot continue with a partial view.
            self.overflow = true;
            return;
        }
        if self.calls.len() <= idx {
            self.calls.resize_with(idx + 1, ToolCall::default);
        }
        let call = &mut self.calls[idx];
        if delta.id.is_some() {
            call.id.clone_from(&delta.id);
        }
        // Fields beside the standard ones (Gemini's `extra_content`) arrive whole.
        for (k, v) in &delta.extra {
            call.extra.insert(k.clone(), v.clone());
        }
        call.kind = Some("function".into());
        if let Some(f) = &delta.function {
            let acc = call.function.get_or_insert_with(Default::default);
            if let Some(n) = &f.name {
                acc.name.get_or_insert_with(String::new).push_str(n);
            }
            if let Some(a) = &f.arguments {
                acc.arguments.get_or_insert_with(String::new).push_str(a);
            }
        }
    }

    fn rewrite(&self, data: &[u8], null_finish: bool, shift: bool) -> Option<Vec<u8>> {
        if shift && TOOL_CALLS_KEY.find(data).is_none() {
            return None;
        }
        let mut v: Value = serde_json::from_slice(data).ok()?;
        for choice in v.get_mut("choices")?.as_array_mut()? {
            if null_finish {
                if let Some(f) = choice.get_mut("finish_reason") {
                    *f = Value::Null;
                }
            }
            if shift {
                if let Some(Value::Array(calls)) = choice.pointer_mut("/delta/tool_calls") {
                    for c in calls {
                        if let Some(i) = c.get("index").and_then(Value::as_u64) {
                            c["index"] = json!(i + u64::from(self.index_offset));
                        }
                    }
                }
            }
        }
        serde_json::to_vec(&v).ok()
    }
}

/// The closing bytes of a streamed loop: the summed usage chunk (if the client asked for it),
/// then the one `[DONE]`.
pub fn stream_tail(
    id: &str,
    model: &str,
    created: u64,
    usage: Option<&Usage>,
    include_usage: bool,
    out: &mut BytesMut,
) {
    if let (true, Some(u)) = (include_usage, usage) {
        let chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": u,
        });
        if let Ok(b) = serde_json::to_vec(&chunk) {
            sse::encode_data(&b, out);
        }
    }
    out.extend_from_slice(sse::DONE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::FunctionCall;

    fn call(id: &str, name: &str, args: &str) -> ToolCall {
        ToolCall {
            id: Some(id.into()),
            kind: Some("function".into()),
            function: Some(FunctionCall {
                name: Some(name.into()),
                arguments: Some(args.into()),
            }),
            ..Default::default()
        }
    }

    fn owner() -> ToolOwnership {
        ToolOwnership::new(["get_weather".to_string(), "mcp_mine".to_string()])
    }

    #[test]
    fn continues_only_when_every_call_is_the_gateways() {
        let o = owner();
        let add = call("a", "mcp_add", "{\"a\":1}");
        assert_eq!(
            decide(std::slice::from_ref(&add), Some("tool_calls"), &o, false),
            Decision::Continue(vec![PendingCall {
                id: "a".into(),
                name: "mcp_add".into(),
                arguments: "{\"a\":1}".into(),
                carried: Default::default(),
            }])
        );
        // Mixed with a client tool, or a client-defined mcp_ name: back to the client.
        let weather = call("b", "get_weather", "{}");
        assert_eq!(
            decide(&[add.clone(), weather], Some("tool_calls"), &o, false),
            Decision::Finish
        );
        let mine = call("c", "mcp_mine", "{}");
        assert_eq!(
            decide(&[mine], Some("tool_calls"), &o, false),
            Decision::Finish
        );
        assert_eq!(
            decide(std::slice::from_ref(&add), Some("length"), &o, false),
            Decision::Finish
        );
        assert_eq!(
            decide(std::slice::from_ref(&add), Some("tool_calls"), &o, true),
            Decision::LimitReached
        );
        assert_eq!(decide(&[], Some("stop"), &o, false), Decision::Finish);
        assert_eq!(
            decide(std::slice::from_ref(&add), None, &o, false),
            Decision::Finish
        );
    }

    #[test]
    fn finalize_keeps_only_client_calls_of_a_mixed_reply_and_sums_usage() {
        let body = br#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"mcp_add","arguments":"{}"}},{"id":"b","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2},"system_fingerprint":"fp"}"#;
        let total = Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            total_tokens: 15,
            ..Default::default()
        };
        let out = finalize_body(body, Some(&total), &owner())
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert_eq!(v["usage"]["total_tokens"], 15);
        assert_eq!(v["system_fingerprint"], "fp");
    }

    #[test]
    fn finalize_leaves_a_plain_single_round_reply_untouched() {
        let body = br#"{"b":1,"a":2,"choices":[{"message":{"content":"hi"}}]}"#;
        assert_eq!(finalize_body(body, None, &owner()).unwrap(), None);
    }

    #[test]
    fn whole_completion_becomes_a_stream_the_relay_reads() {
        let body = br#"{"id":"x","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"mcp_add","arguments":"{}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        let sse = completion_as_sse(body).unwrap();
        let mut r = RoundRelay::new(owner(), 0, false);
        let mut out = BytesMut::new();
        r.feed(&sse, &mut out).unwrap();
        let s = r.finish(&mut out);
        assert_eq!(s.tool_calls.len(), 1);
        assert_eq!(s.usage.unwrap().total_tokens, 3);
        assert_eq!(s.finish_reason.as_deref(), Some("tool_calls"));
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(!text.contains("[DONE]") && !text.contains("\"finish_reason\":\"tool_calls\""));
        assert!(completion_as_sse(b"{}").is_none());
        // Malformed tool calls are carried, never a panic.
        let odd = br#"{"choices":[{"message":{"content":null,"tool_calls":[1,"x",null]},"finish_reason":"tool_calls"}]}"#;
        assert!(completion_as_sse(odd).is_some());
    }

    #[test]
    fn unanswered_gateway_calls_leave_the_history() {
        let mut msgs: Vec<Value> = serde_json::from_str(r#"[
            {"role":"user","content":"x"},
            {"role":"assistant","content":"a","tool_calls":[{"id":"1","function":{"name":"mcp_add"}},{"id":"2","function":{"name":"get_weather"}}]},
            {"role":"tool","tool_call_id":"2","content":"sunny"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"3","function":{"name":"mcp_add"}}]},
            {"role":"tool","tool_call_id":"3","content":"5"},
            {"role":"assistant","content":"b","tool_calls":[{"id":"4","function":{"name":"mcp_echo"}}]}
        ]"#).unwrap();
        assert!(drop_unanswered_gateway_calls(&mut msgs, &owner()));
        assert!(!drop_unanswered_gateway_calls(&mut msgs, &owner()));
        assert_eq!(msgs[1]["tool_calls"].as_array().unwrap().len(), 1);
        assert_eq!(msgs[1]["tool_calls"][0]["id"], "2");
        assert_eq!(msgs[3]["tool_calls"][0]["id"], "3");
        assert!(msgs[5].get("tool_calls").is_none());
        assert_eq!(msgs[5]["content"], "b");
    }

    #[test]
    fn huge_tool_call_index_is_not_allocated() {
        let input = "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":4000000000,\"id\":\"x\",\"function\":{\"name\":\"mcp_add\",\"arguments\":\"{}\"}}]}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n";
        let mut r = RoundRelay::new(owner(), 0, false);
        let out = relay_all(&mut r, input, 3);
        // Relayed unchanged (finish reason kept), never run.
        assert!(out.contains("\"finish_reason\":\"tool_calls\""));
        let s = r.finish(&mut BytesMut::new());
        assert!(s.too_many_calls);
        assert!(s.tool_calls.is_empty());
    }

    #[test]
    fn parse_reply_reads_calls_content_and_usage() {
        let body = br#"{"choices":[{"message":{"content":"hi","reasoning_content":"think","refusal":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"mcp_add","arguments":"{}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        let r = parse_reply(body).unwrap();
        assert_eq!(r.content.as_deref(), Some("hi"));
        assert_eq!(r.tool_calls.len(), 1);
        assert_eq!(r.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(r.usage.unwrap().total_tokens, 7);
        // Reasoning text alone (DeepSeek-style) does not go back: some servers refuse it.
        assert!(r.carried.is_empty());
        let signed = br#"{"choices":[{"message":{"content":"hi","reasoning_content":"think","reasoning_signature":"s","refusal":null,"tool_calls":[]},"finish_reason":"tool_calls"}]}"#;
        let r = parse_reply(signed).unwrap();
        assert_eq!(r.carried.len(), 2);
        let m = assistant_message(r.content.as_deref(), &[], &r.carried);
        assert_eq!(m["reasoning_content"], "think");
        assert!(m.get("refusal").is_none());
        assert!(parse_reply(b"{\"choices\":[]}").is_err());
        assert!(parse_reply(b"not json").is_err());
    }

    const TOOL_ROUND: &str = concat!(
        "data: {\"id\":\"r1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"mcp_add\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"r1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\":2,\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"r1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"b\\\":3}\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"r1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"id\":\"r1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":15}}\n\n",
        "data: [DONE]\n\n",
    );

    fn relay_all(r: &mut RoundRelay, input: &str, split: usize) -> String {
        let mut out = BytesMut::new();
        let (a, b) = input.as_bytes().split_at(split);
        r.feed(a, &mut out).unwrap();
        r.feed(b, &mut out).unwrap();
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn continued_round_hides_done_usage_and_finish_and_accumulates_the_call() {
        // Same result wherever the input is split.
        for split in 0..TOOL_ROUND.len() {
            let mut r = RoundRelay::new(owner(), 0, false);
            let mut out = relay_all(&mut r, TOOL_ROUND, split);
            let mut tail = BytesMut::new();
            let s = r.finish(&mut tail);
            out.push_str(std::str::from_utf8(&tail).unwrap());
            assert!(!out.contains("[DONE]"), "{out}");
            assert!(!out.contains("usage"), "{out}");
            assert!(!out.contains("\"finish_reason\":\"tool_calls\""), "{out}");
            assert_eq!(out.matches("data: ").count(), 4);
            assert_eq!(s.tool_calls.len(), 1);
            let f = s.tool_calls[0].function.as_ref().unwrap();
            assert_eq!(f.name.as_deref(), Some("mcp_add"));
            assert_eq!(f.arguments.as_deref(), Some("{\"a\":2,\"b\":3}"));
            assert_eq!(s.tool_calls[0].id.as_deref(), Some("call_1"));
            assert_eq!(s.usage.as_ref().unwrap().total_tokens, 15);
            assert!(!s.failed);
        }
    }

    #[test]
    fn later_rounds_shift_tool_call_indexes_and_last_round_keeps_finish() {
        let mut r = RoundRelay::new(owner(), 2, true);
        let out = relay_all(&mut r, TOOL_ROUND, 0);
        assert!(out.contains("\"index\":2"), "{out}");
        assert!(!out.contains("\"tool_calls\":[{\"index\":0"), "{out}");
        assert!(out.contains("\"finish_reason\":\"tool_calls\""), "{out}");
        let s = r.finish(&mut BytesMut::new());
        // Accumulated with the round's own indexes.
        assert_eq!(s.tool_calls.len(), 1);
    }

    #[test]
    fn client_tool_round_keeps_finish_reason() {
        let input = TOOL_ROUND.replace("mcp_add", "get_weather");
        let mut r = RoundRelay::new(owner(), 0, false);
        let out = relay_all(&mut r, &input, 10);
        assert!(out.contains("\"finish_reason\":\"tool_calls\""));
        assert!(!out.contains("[DONE]"));
    }

    #[test]
    fn error_event_marks_the_round_failed_and_passes() {
        let input = "data: {\"error\":{\"message\":\"boom\",\"type\":\"api_error\",\"param\":null,\"code\":\"x\"}}\n\ndata: [DONE]\n\n";
        let mut r = RoundRelay::new(owner(), 0, false);
        let out = relay_all(&mut r, input, 7);
        assert!(out.contains("boom"));
        assert!(r.finish(&mut BytesMut::new()).failed);
    }

    #[test]
    fn tail_has_summed_usage_then_one_done() {
        let u = Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
            total_tokens: 7,
            ..Default::default()
        };
        let mut out = BytesMut::new();
        stream_tail("id", "m", 1, Some(&u), true, &mut out);
        let s = std::str::from_utf8(&out).unwrap();
        assert!(s.contains("\"total_tokens\":7"));
        assert!(s.ends_with("data: [DONE]\n\n"));
        let mut out = BytesMut::new();
        stream_tail("id", "m", 1, Some(&u), false, &mut out);
        assert_eq!(&out[..], b"data: [DONE]\n\n");
    }
}
