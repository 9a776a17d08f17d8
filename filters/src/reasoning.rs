//! Provider reasoning state that must come back with a turn: Anthropic's signed thinking blocks
//! (`thinking_blocks` on the assistant message) and Gemini's thought signatures
//! (`tool_calls[].extra_content.google.thought_signature`).
//!
//! Clients that keep those fields replay valid turns on their own. Most SDK stream accumulators
//! keep only the standard ones (`role`, `content`, `tool_calls` with their ids), so the gateway
//! also keeps the state in a vault keyed by tool-call id: [`TurnState::entries`] says what to
//! keep after an answer, [`ids_missing_state`] and [`restore`] put it back into a later request.
//! State the client sent wins over the vault's.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

/// Most tool-call ids looked up for one request (a long agent history needs only its recent
/// turns restored; older turns without state are accepted by both providers).
pub const MAX_LOOKUPS: usize = 64;

/// The reasoning state of one assistant turn.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TurnState {
    /// Anthropic thinking / redacted thinking blocks, in order.
    pub thinking_blocks: Vec<Value>,
    /// Each tool call's id and its `extra_content` (Gemini's signature), in order.
    pub calls: Vec<(String, Option<Value>)>,
}

impl TurnState {
    /// The state of a `chat.completion` body's first choice (`None` when it is not one).
    pub fn from_completion(body: &[u8]) -> Option<TurnState> {
        let v: Value = serde_json::from_slice(body).ok()?;
        Some(Self::from_message(v.pointer("/choices/0/message")?))
    }

    /// The state of an assistant message in the OpenAI shape.
    pub fn from_message(m: &Value) -> TurnState {
        let thinking_blocks = m
            .get("thinking_blocks")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let calls = m
            .get("tool_calls")
            .and_then(Value::as_array)
            .map(|calls| {
                calls
                    .iter()
                    .filter_map(|c| {
                        let id = c.get("id")?.as_str()?.to_string();
                        Some((id, c.get("extra_content").cloned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        TurnState {
            thinking_blocks,
            calls,
        }
    }

    /// What the vault keeps, by tool-call id: the turn's thinking blocks under its first call,
    /// each call's `extra_content` under its own id. Empty when the turn has nothing to keep
    /// (no tool calls, or no state).
    pub fn entries(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for (i, (id, extra)) in self.calls.iter().enumerate() {
            let mut e = Map::new();
            if i == 0 && !self.thinking_blocks.is_empty() {
                e.insert("thinking_blocks".into(), json!(self.thinking_blocks));
            }
            if let Some(x) = extra {
                e.insert("extra_content".into(), x.clone());
            }
            if !e.is_empty() && valid_id(id) {
                out.push((id.clone(), Value::Object(e)));
            }
        }
        out
    }
}

/// Tool-call ids are at most 40 characters of `[A-Za-z0-9_-]` (valid for every provider), so
/// they can name vault entries as they are.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 40
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Which reasoning state a dialect needs back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needed {
    /// Anthropic: the signed thinking blocks of a turn (kept under its first call).
    Thinking,
    /// Gemini: the thought signature on a turn's first call.
    Signature,
}

/// The assistant turns a provider checks: those after the last `user` message (tool results
/// are `tool` messages, so this is the current agent turn). Earlier turns without state are
/// accepted by both providers, and restoring only these bounds the work by the request's size.
fn current_turns(messages: &[Value]) -> std::ops::Range<usize> {
    let start = messages
        .iter()
        .rposition(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map_or(0, |i| i + 1);
    start..messages.len()
}

fn has_state(m: &Value, needed: Needed) -> bool {
    match needed {
        Needed::Thinking => m.get("thinking_blocks").is_some(),
        Needed::Signature => m
            .get("tool_calls")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c.get("extra_content").is_some())),
    }
}

fn first_call_id(m: &Value) -> Option<&str> {
    m.pointer("/tool_calls/0/id")
        .and_then(Value::as_str)
        .filter(|i| valid_id(i))
}

/// Ids to look up: the first call of each current assistant turn that lacks the state the
/// dialect needs, each once, at most [`MAX_LOOKUPS`].
pub fn ids_missing_state(messages: &[Value], needed: Needed) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for m in &messages[current_turns(messages)] {
        if m.get("role").and_then(Value::as_str) != Some("assistant") || has_state(m, needed) {
            continue;
        }
        if let Some(id) = first_call_id(m) {
            if !ids.iter().any(|i| i == id) {
                ids.push(id.to_string());
                if ids.len() == MAX_LOOKUPS {
                    break;
                }
            }
        }
    }
    ids
}

/// Puts the vault's entries back into the current assistant turns that lack them, each entry
/// at most once; true when anything changed. Fields the client sent are never replaced.
pub fn restore(messages: &mut [Value], found: &HashMap<String, Value>, needed: Needed) -> bool {
    if found.is_empty() {
        return false;
    }
    let mut used: Vec<&str> = Vec::new();
    let mut changed = false;
    let range = current_turns(messages);
    for m in &mut messages[range] {
        if m.get("role").and_then(Value::as_str) != Some("assistant") || has_state(m, needed) {
            continue;
        }
        let Some((id, entry)) = first_call_id(m).and_then(|id| found.get_key_value(id)) else {
            continue;
        };
        if used.contains(&id.as_str()) {
            continue;
        }
        used.push(id.as_str());
        match needed {
            Needed::Thinking => {
                if let Some(b) = entry.get("thinking_blocks") {
                    m["thinking_blocks"] = b.clone();
                    changed = true;
                }
            }
            Needed::Signature => {
                if let Some(x) = entry.get("extra_content") {
                    m["tool_calls"][0]["extra_content"] = x.clone();
                    changed = true;
                }
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_kept_and_restored_from_its_ids() {
        let answer = json!({"choices": [{"message": {"role": "assistant", "content": null,
            "thinking_blocks": [{"type": "thinking", "thinking": "t", "signature": "s"},
                                {"type": "redacted_thinking", "data": "d"}],
            "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "a", "arguments": "{}"},
                 "extra_content": {"google": {"thought_signature": "g1"}}},
                {"id": "toolu_2", "type": "function", "function": {"name": "b", "arguments": "{}"}}]}}]});
        let st = TurnState::from_completion(answer.to_string().as_bytes()).unwrap();
        let entries: HashMap<String, Value> = st.entries().into_iter().collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries["toolu_1"]["thinking_blocks"][1]["data"], "d");
        assert_eq!(
            entries["toolu_1"]["extra_content"]["google"]["thought_signature"],
            "g1"
        );
        // The client sends back only the standard fields.
        let mut msgs = vec![
            json!({"role": "user", "content": "q"}),
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "b", "arguments": "{}"}}]}),
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "1"}),
        ];
        assert_eq!(ids_missing_state(&msgs, Needed::Thinking), ["toolu_1"]);
        assert_eq!(ids_missing_state(&msgs, Needed::Signature), ["toolu_1"]);
        let mut anthropic = msgs.clone();
        assert!(restore(&mut anthropic, &entries, Needed::Thinking));
        assert_eq!(anthropic[1]["thinking_blocks"][0]["signature"], "s");
        assert!(restore(&mut msgs, &entries, Needed::Signature));
        assert_eq!(
            msgs[1]["tool_calls"][0]["extra_content"]["google"]["thought_signature"],
            "g1"
        );
        assert!(msgs[1].get("thinking_blocks").is_none());
        // What the client sent wins; a complete turn asks for nothing.
        let mut own = anthropic.clone();
        own[1]["thinking_blocks"] =
            json!([{"type": "thinking", "thinking": "mine", "signature": "m"}]);
        assert!(!restore(&mut own, &entries, Needed::Thinking));
        assert_eq!(own[1]["thinking_blocks"][0]["signature"], "m");
        assert!(ids_missing_state(&msgs, Needed::Signature).is_empty());
        // Only the current turn, and each entry once: 10,000 copies of one id cost one.
        let mut many = vec![json!({"role": "user", "content": "q"})];
        for _ in 0..10_000 {
            many.push(anthropic[1].clone());
            many.last_mut()
                .unwrap()
                .as_object_mut()
                .unwrap()
                .remove("thinking_blocks");
        }
        assert_eq!(ids_missing_state(&many, Needed::Thinking).len(), 1);
        assert!(restore(&mut many, &entries, Needed::Thinking));
        assert_eq!(
            many.iter()
                .filter(|m| m.get("thinking_blocks").is_some())
                .count(),
            1
        );
        // Turns before the last user message are not touched.
        let mut old = vec![
            anthropic[0].clone(),
            msgs[1].clone(),
            json!({"role": "user", "content": "next"}),
        ];
        old[1].as_object_mut().unwrap().remove("thinking_blocks");
        assert!(ids_missing_state(&old, Needed::Thinking).is_empty());
        // Ids that could not be keys are never looked up or kept.
        assert!(!valid_id("a b"));
        assert!(!valid_id(&"x".repeat(41)));
    }
}
