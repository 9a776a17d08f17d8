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

/// Ids of tool calls in assistant messages whose state the client did not send: the first
/// call of a turn without thinking blocks, every call without `extra_content`. The most recent
/// turns first, at most [`MAX_LOOKUPS`].
pub fn ids_missing_state(messages: &[Value]) -> Vec<String> {
    let mut ids = Vec::new();
    for m in messages.iter().rev() {
        if m.get("role").and_then(Value::as_str) != Some("assistant") {
            continue;
        }
        let Some(calls) = m.get("tool_calls").and_then(Value::as_array) else {
            continue;
        };
        let has_thinking =
            m.get("thinking_blocks").is_some() || m.get("reasoning_signature").is_some();
        for (i, c) in calls.iter().enumerate() {
            let Some(id) = c.get("id").and_then(Value::as_str).filter(|i| valid_id(i)) else {
                continue;
            };
            if (i == 0 && !has_thinking) || c.get("extra_content").is_none() {
                ids.push(id.to_string());
                if ids.len() == MAX_LOOKUPS {
                    return ids;
                }
            }
        }
    }
    ids
}

/// Puts the vault's entries back into the assistant messages that lack them; true when
/// anything changed. Fields the client sent are never replaced.
pub fn restore(messages: &mut [Value], found: &HashMap<String, Value>) -> bool {
    if found.is_empty() {
        return false;
    }
    let mut changed = false;
    for m in messages.iter_mut() {
        if m.get("role").and_then(Value::as_str) != Some("assistant") {
            continue;
        }
        let has_thinking =
            m.get("thinking_blocks").is_some() || m.get("reasoning_signature").is_some();
        let mut blocks = None;
        let Some(calls) = m.get_mut("tool_calls").and_then(Value::as_array_mut) else {
            continue;
        };
        for (i, c) in calls.iter_mut().enumerate() {
            let Some(entry) = c
                .get("id")
                .and_then(Value::as_str)
                .and_then(|id| found.get(id))
            else {
                continue;
            };
            if i == 0 && !has_thinking {
                blocks = entry.get("thinking_blocks").cloned();
            }
            if let (Some(x), None) = (entry.get("extra_content"), c.get("extra_content")) {
                c["extra_content"] = x.clone();
                changed = true;
            }
        }
        if let Some(b) = blocks {
            m["thinking_blocks"] = b;
            changed = true;
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
        assert_eq!(ids_missing_state(&msgs), ["toolu_1", "toolu_2"]);
        assert!(restore(&mut msgs, &entries));
        assert_eq!(msgs[1]["thinking_blocks"][0]["signature"], "s");
        assert_eq!(
            msgs[1]["tool_calls"][0]["extra_content"]["google"]["thought_signature"],
            "g1"
        );
        assert!(msgs[1]["tool_calls"][1].get("extra_content").is_none());
        // What the client sent wins; a complete history asks for nothing.
        let mut own = msgs.clone();
        own[1]["thinking_blocks"] =
            json!([{"type": "thinking", "thinking": "mine", "signature": "m"}]);
        restore(&mut own, &entries);
        assert_eq!(own[1]["thinking_blocks"][0]["signature"], "m");
        assert_eq!(ids_missing_state(&msgs), ["toolu_2"]);
        // Ids that could not be keys are never looked up or kept.
        assert!(!valid_id("a b"));
        assert!(!valid_id(&"x".repeat(41)));
    }
}
