//! The OpenTelemetry GenAI semantic conventions' view of a canonical exchange: the operation and
//! provider names, finish reasons, and messages in the conventions' `parts` form
//! (`gen_ai.input.messages`, `gen_ai.output.messages`), read from Chat Completions JSON.

use serde_json::{json, Map, Value};

/// `gen_ai.operation.name` of an API route, `None` for routes that are not model calls.
pub fn operation(route: &str) -> Option<&'static str> {
    match route {
        "/v1/chat/completions" | "/v1/messages" | "/v1/responses" => Some("chat"),
        "/v1/completions" => Some("text_completion"),
        "/v1/embeddings" => Some("embeddings"),
        _ => None,
    }
}

/// `gen_ai.provider.name`: the conventions' well-known value where the provider has one, else
/// the provider's configured name.
pub fn provider_name(provider: &str) -> &str {
    match provider {
        "google" | "gemini" => "gcp.gemini",
        "vertex" | "vertex_ai" => "gcp.vertex_ai",
        "mistral" => "mistral_ai",
        "xai" => "x_ai",
        "bedrock" => "aws.bedrock",
        "azure" => "azure.ai.openai",
        p => p,
    }
}

/// A JSON string value starting at `rest` (after a key's colon), if it is plain: no escapes,
/// not empty (finish reasons and model names are plain words).
fn plain_string(rest: &[u8]) -> Option<&str> {
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = rest[start..].strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    if rest[end] != b'"' || end == 0 {
        return None;
    }
    std::str::from_utf8(&rest[..end]).ok()
}

/// What a traced stream's canonical chunks say about the answer: its finish reasons (each
/// choice's, in order, at most 16) and the model its first chunk names. Read from the SSE bytes
/// as they pass, without parsing the chunks.
#[derive(Debug, Default)]
pub struct StreamFacts {
    pub finish_reasons: Vec<String>,
    pub model: Option<String>,
}

impl StreamFacts {
    pub fn observe(&mut self, sse: &[u8]) {
        const FINISH: &[u8] = b"\"finish_reason\":";
        const MODEL: &[u8] = b"\"model\":";
        if self.model.is_none() {
            if let Some(at) = memchr::memmem::find(sse, MODEL) {
                self.model = plain_string(&sse[at + MODEL.len()..]).map(str::to_string);
            }
        }
        for at in memchr::memmem::find_iter(sse, FINISH) {
            if self.finish_reasons.len() < 16 {
                if let Some(r) = plain_string(&sse[at + FINISH.len()..]) {
                    self.finish_reasons.push(r.to_string());
                }
            }
        }
    }
}

/// The model a `chat.completion` body names.
pub fn response_model(completion: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        model: Option<String>,
    }
    serde_json::from_slice::<Probe>(completion).ok()?.model
}

/// The finish reasons of a `chat.completion` (or `text_completion`) body, one per choice.
pub fn finish_reasons(completion: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<Value>(completion) else {
        return Vec::new();
    };
    v["choices"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["finish_reason"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn text_parts(content: &Value, parts: &mut Vec<Value>) {
    match content {
        Value::String(s) if !s.is_empty() => parts.push(json!({"type": "text", "content": s})),
        Value::Array(items) => {
            for item in items {
                match item["type"].as_str() {
                    Some("text") => {
                        parts.push(json!({"type": "text", "content": item["text"]}));
                    }
                    Some("image_url") => parts.push(json!({"type": "uri", "modality": "image",
                        "uri": item["image_url"]["url"]})),
                    Some(other) => parts.push(json!({"type": other})),
                    None => {}
                }
            }
        }
        _ => {}
    }
}

fn tool_call_parts(calls: &Value, parts: &mut Vec<Value>) {
    for call in calls.as_array().into_iter().flatten() {
        let f = &call["function"];
        // Arguments are a JSON string on the wire; the conventions record the object.
        let args = f["arguments"]
            .as_str()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
            .unwrap_or_else(|| f["arguments"].clone());
        parts.push(
            json!({"type": "tool_call", "id": call["id"], "name": f["name"],
            "arguments": args}),
        );
    }
}

fn message(m: &Value) -> Value {
    let role = m["role"].as_str().unwrap_or("user");
    let mut parts = Vec::new();
    if role == "tool" {
        let response = match &m["content"] {
            Value::String(s) => Value::String(s.clone()),
            other => other.clone(),
        };
        parts.push(
            json!({"type": "tool_call_response", "id": m["tool_call_id"],
            "response": response}),
        );
    } else {
        if let Some(r) = m["reasoning_content"].as_str().filter(|r| !r.is_empty()) {
            parts.push(json!({"type": "reasoning", "content": r}));
        }
        text_parts(&m["content"], &mut parts);
        tool_call_parts(&m["tool_calls"], &mut parts);
    }
    let role = if role == "developer" { "system" } else { role };
    let mut out = Map::new();
    out.insert("role".into(), role.into());
    out.insert("parts".into(), parts.into());
    Value::Object(out)
}

/// `gen_ai.input.messages` from a Chat Completions `messages` array (its JSON text).
pub fn input_messages(messages: &str) -> Option<String> {
    let v: Value = serde_json::from_str(messages).ok()?;
    let list: Vec<Value> = v.as_array()?.iter().map(message).collect();
    serde_json::to_string(&list).ok()
}

/// `gen_ai.output.messages` from a `chat.completion` body.
pub fn output_messages(completion: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(completion).ok()?;
    let list: Vec<Value> = v["choices"]
        .as_array()?
        .iter()
        .map(|c| {
            let mut m = message(&c["message"]);
            if let Some(o) = m.as_object_mut() {
                o.insert("role".into(), "assistant".into());
                o.insert("finish_reason".into(), c["finish_reason"].clone());
            }
            m
        })
        .collect();
    serde_json::to_string(&list).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_in_the_conventions_form() {
        let input = r#"[{"role":"system","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"Weather?"}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function",
              "function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
            {"role":"tool","tool_call_id":"c1","content":"rainy"}]"#;
        let v: Value = serde_json::from_str(&input_messages(input).unwrap()).unwrap();
        assert_eq!(
            v,
            json!([
                {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
                {"role": "user", "parts": [{"type": "text", "content": "Weather?"}]},
                {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1",
                    "name": "get_weather", "arguments": {"city": "Paris"}}]},
                {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1",
                    "response": "rainy"}]}
            ])
        );
        let body = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Rain."},
            "finish_reason":"stop"}]}"#;
        let v: Value = serde_json::from_str(&output_messages(body).unwrap()).unwrap();
        assert_eq!(
            v,
            json!([{"role": "assistant", "parts": [{"type": "text", "content": "Rain."}],
                "finish_reason": "stop"}])
        );
        assert_eq!(finish_reasons(body), ["stop"]);
        assert!(input_messages("not json").is_none());
    }

    #[test]
    fn stream_facts_read_plain_values_only() {
        let mut f = StreamFacts::default();
        f.observe(br#"data: {"id":"c","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}"#);
        f.observe(br#"data: {"model":"other","choices":[{"index":0,"delta":{},"finish_reason": "stop"},{"index":1,"delta":{},"finish_reason":"length"}]}"#);
        f.observe(br#"data: {"choices":[{"index":2,"finish_reason":"we\"ird"},{"index":3,"finish_reason":""}]}"#);
        assert_eq!(f.finish_reasons, ["stop", "length"]);
        assert_eq!(f.model.as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!(
            response_model(br#"{"model":"m-1","choices":[]}"#).as_deref(),
            Some("m-1")
        );
    }

    #[test]
    fn names() {
        assert_eq!(operation("/v1/messages"), Some("chat"));
        assert_eq!(operation("/v1/embeddings"), Some("embeddings"));
        assert_eq!(operation("/health"), None);
        assert_eq!(provider_name("google"), "gcp.gemini");
        assert_eq!(provider_name("my-vllm"), "my-vllm");
    }
}
