//! The response cache's pure parts: the normalised request an entry is found by, and a
//! streamed answer folded into the whole `chat.completion` an entry keeps (so one entry serves
//! streamed and whole requests, in every door's format).

use serde_json::{json, Map, Value};

use crate::sse::SseDecoder;

/// Fields that change how an answer is delivered or attributed, not what it says.
const NOT_IN_KEY: [&str; 4] = ["stream", "stream_options", "user", "model"];

/// The canonical request as the cache key's input: the JSON with `stream`, `stream_options`,
/// `user` and `model` (the key names the upstream model itself) removed, and object keys in
/// sorted order at every depth (`serde_json`'s map), so field order does not split entries.
/// `None` when the body is not a JSON object.
pub fn normalised_request(body: &[u8]) -> Option<Vec<u8>> {
    let mut v: Map<String, Value> = serde_json::from_slice(body).ok()?;
    for k in NOT_IN_KEY {
        v.remove(k);
    }
    serde_json::to_vec(&v).ok()
}

#[derive(Default)]
struct ToolCallAcc {
    id: Option<Value>,
    kind: Option<Value>,
    name: String,
    arguments: String,
}

#[derive(Default)]
struct ChoiceAcc {
    role: Option<Value>,
    content: Option<String>,
    reasoning: Option<String>,
    refusal: Option<String>,
    tool_calls: Vec<(u64, ToolCallAcc)>,
    finish_reason: Value,
    /// Other delta fields (e.g. `thinking_blocks`) kept as last seen.
    extra: Map<String, Value>,
}

/// Folds an OpenAI chat-completion stream (its SSE bytes) into the `chat.completion` body it
/// stands for: contents, reasoning and tool-call arguments concatenated per choice, tool calls
/// by index, finish reasons, `usage` from its chunk (or `usage`, given, when the stream's own
/// was hidden from the client). `None` when the stream carried an error, did not end with
/// `[DONE]`, or is not a chat-completion stream: such an answer is not kept.
pub fn completion_from_stream(sse: &[u8], usage: Option<Value>) -> Option<Vec<u8>> {
    let mut dec = SseDecoder::new();
    dec.push(sse).ok()?;
    let mut head = Map::new();
    let mut choices: Vec<(u64, ChoiceAcc)> = Vec::new();
    let mut seen_usage: Option<Value> = None;
    let mut done = false;
    let mut events = Vec::new();
    while let Some(ev) = dec.next_event() {
        events.push(ev);
    }
    events.extend(dec.finish());
    for ev in events {
        if ev.is_done() {
            done = true;
            break;
        }
        let Some(data) = ev.data else { continue };
        let chunk: Map<String, Value> = serde_json::from_slice(&data).ok()?;
        if chunk.contains_key("error") {
            return None;
        }
        if chunk.get("object").and_then(Value::as_str) != Some("chat.completion.chunk") {
            return None;
        }
        for k in [
            "id",
            "created",
            "model",
            "system_fingerprint",
            "service_tier",
        ] {
            if let Some(v) = chunk.get(k).filter(|v| !v.is_null()) {
                head.entry(k.to_string()).or_insert_with(|| v.clone());
            }
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            seen_usage = Some(u.clone());
        }
        for c in chunk
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let pos = match choices.iter().position(|(i, _)| *i == index) {
                Some(p) => p,
                None => {
                    choices.push((index, ChoiceAcc::default()));
                    choices.len() - 1
                }
            };
            let acc = &mut choices[pos].1;
            if let Some(f) = c.get("finish_reason").filter(|f| !f.is_null()) {
                acc.finish_reason = f.clone();
            }
            let Some(delta) = c.get("delta").and_then(Value::as_object) else {
                continue;
            };
            for (k, v) in delta {
                match (k.as_str(), v) {
                    ("role", r) if !r.is_null() => acc.role = Some(r.clone()),
                    ("content", Value::String(s)) => {
                        acc.content.get_or_insert_with(String::new).push_str(s)
                    }
                    ("reasoning_content", Value::String(s)) => {
                        acc.reasoning.get_or_insert_with(String::new).push_str(s)
                    }
                    ("refusal", Value::String(s)) => {
                        acc.refusal.get_or_insert_with(String::new).push_str(s)
                    }
                    ("tool_calls", Value::Array(calls)) => {
                        for tc in calls {
                            let i = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
                            let p = match acc.tool_calls.iter().position(|(j, _)| *j == i) {
                                Some(p) => p,
                                None => {
                                    acc.tool_calls.push((i, ToolCallAcc::default()));
                                    acc.tool_calls.len() - 1
                                }
                            };
                            let t = &mut acc.tool_calls[p].1;
                            if let Some(id) = tc.get("id").filter(|v| !v.is_null()) {
                                t.id = Some(id.clone());
                            }
                            if let Some(ty) = tc.get("type").filter(|v| !v.is_null()) {
                                t.kind = Some(ty.clone());
                            }
                            if let Some(f) = tc.get("function") {
                                if let Some(n) = f.get("name").and_then(Value::as_str) {
                                    t.name.push_str(n);
                                }
                                if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                                    t.arguments.push_str(a);
                                }
                            }
                        }
                    }
                    (_, Value::Null) => {}
                    (k, v) => {
                        acc.extra.insert(k.to_string(), v.clone());
                    }
                }
            }
        }
    }
    if !done || choices.is_empty() {
        return None;
    }
    choices.sort_by_key(|(i, _)| *i);
    let choices: Vec<Value> = choices
        .into_iter()
        .map(|(index, acc)| {
            let mut message = Map::new();
            message.insert(
                "role".into(),
                acc.role.unwrap_or_else(|| json!("assistant")),
            );
            message.insert(
                "content".into(),
                acc.content.map_or(Value::Null, Value::String),
            );
            if let Some(r) = acc.reasoning {
                message.insert("reasoning_content".into(), Value::String(r));
            }
            if let Some(r) = acc.refusal {
                message.insert("refusal".into(), Value::String(r));
            }
            if !acc.tool_calls.is_empty() {
                let mut calls = acc.tool_calls;
                calls.sort_by_key(|(i, _)| *i);
                let calls: Vec<Value> = calls
                    .into_iter()
                    .map(|(_, t)| {
                        json!({"id": t.id.unwrap_or(Value::Null),
                            "type": t.kind.unwrap_or_else(|| json!("function")),
                            "function": {"name": t.name, "arguments": t.arguments}})
                    })
                    .collect();
                message.insert("tool_calls".into(), Value::Array(calls));
            }
            for (k, v) in acc.extra {
                message.entry(k).or_insert(v);
            }
            json!({"index": index, "message": message, "logprobs": null,
                "finish_reason": acc.finish_reason})
        })
        .collect();
    let mut out = head;
    out.insert("object".into(), json!("chat.completion"));
    out.insert("choices".into(), Value::Array(choices));
    if let Some(u) = seen_usage.or(usage) {
        out.insert("usage".into(), u);
    }
    serde_json::to_vec(&out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_ignores_delivery_and_field_order() {
        let a = normalised_request(br#"{"model":"a","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"user":"u1","temperature":0}"#).unwrap();
        let b = normalised_request(
            br#"{"temperature":0,"messages":[{"content":"hi","role":"user"}],"model":"b"}"#,
        )
        .unwrap();
        assert_eq!(a, b);
        let c =
            normalised_request(br#"{"temperature":1,"messages":[{"content":"hi","role":"user"}]}"#)
                .unwrap();
        assert_ne!(a, c);
        assert!(normalised_request(b"[1]").is_none());
    }

    #[test]
    fn a_stream_folds_into_its_completion() {
        let sse = concat!(
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"think\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\",\"tool_calls\":[{\"index\":0,\"id\":\"t1\",\"type\":\"function\",\"function\":{\"name\":\"add\",\"arguments\":\"{\\\"a\\\":\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        let usage = json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5});
        let body = completion_from_stream(sse.as_bytes(), Some(usage.clone())).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"id": "c1", "object": "chat.completion", "created": 7, "model": "m",
                "choices": [{"index": 0, "logprobs": null, "finish_reason": "tool_calls",
                    "message": {"role": "assistant", "content": "Hello", "reasoning_content": "think",
                        "tool_calls": [{"id": "t1", "type": "function",
                            "function": {"name": "add", "arguments": "{\"a\":1}"}}]}}],
                "usage": usage})
        );
        // Not kept: an error event, a stream cut before [DONE].
        let err = "data: {\"error\":{\"message\":\"x\"}}\n\ndata: [DONE]\n\n";
        assert!(completion_from_stream(err.as_bytes(), None).is_none());
        let cut = &sse[..sse.len() - "data: [DONE]\n\n".len()];
        assert!(completion_from_stream(cut.as_bytes(), None).is_none());
    }
}
