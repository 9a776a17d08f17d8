//! Mock model upstreams that call MCP tools deterministically, in OpenAI's and Anthropic's
//! wire formats (streamed in uneven TCP writes, or not). Shared by `tests/mcp.rs` and
//! `benches/mcp_loop.rs`; the including crate declares `mod common`.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{json_response, sse_steps, Recorded, Step};

/// What the model does next.
enum Act {
    Calls(Vec<(&'static str, Value)>),
    Text(String),
    /// Answer with a 500.
    Fail,
}

/// The model's behaviour, chosen by the first user message. `round` counts the assistant
/// tool-call messages already in the conversation; `results` are the latest tool results.
fn script(prompt: &str, round: usize, results: &[String]) -> Act {
    let joined = results.join(" | ");
    match (prompt, round) {
        ("add" | "json-add" | "err2", 0) => Act::Calls(vec![("mcp_add", json!({"a": 2, "b": 3}))]),
        ("err2", _) => Act::Fail,
        ("local", 0) => Act::Calls(vec![("mcp_local__echo", json!({"text": "from stdio"}))]),
        ("local-env", 0) => Act::Calls(vec![
            ("mcp_local__echo", json!({"text": "env:OPENAI_API_KEY"})),
            ("mcp_local__echo", json!({"text": "env:PATH"})),
        ]),
        ("parallel", 0) => Act::Calls(vec![
            ("mcp_sleep", json!({"ms": 400})),
            ("mcp_sleep", json!({"ms": 400})),
            ("mcp_add", json!({"a": 1, "b": 1})),
        ]),
        ("multi", 0) => Act::Calls(vec![("mcp_add", json!({"a": 1, "b": 2}))]),
        ("multi", 1) => {
            let prev: i64 = results[0].parse().unwrap();
            Act::Calls(vec![("mcp_add", json!({"a": prev, "b": 10}))])
        }
        ("fail", 0) => Act::Calls(vec![("mcp_fail", json!({}))]),
        ("unknown", 0) => Act::Calls(vec![("mcp_nope", json!({}))]),
        ("slow", 0) => Act::Calls(vec![("mcp_sleep", json!({"ms": 5000}))]),
        ("forever", _) => Act::Calls(vec![("mcp_echo", json!({"text": format!("r{round}")}))]),
        ("client", 0) => Act::Calls(vec![("get_weather", json!({"city": "Paris"}))]),
        ("mixed", 0) => Act::Calls(vec![
            ("mcp_add", json!({"a": 1, "b": 1})),
            ("get_weather", json!({"city": "Paris"})),
        ]),
        ("late", 0) => Act::Calls(vec![("mcp_late", json!({}))]),
        ("plain", _) => Act::Text("no tools needed".into()),
        // A2A agents' skills (tests/sdk/a2a_agent.py).
        ("agent", 0) => Act::Calls(vec![(
            "a2a_echo_agent_echo",
            json!({"message": "hello agent"}),
        )]),
        ("agent-old", 0) => Act::Calls(vec![(
            "a2a_old_agent_echo",
            json!({"message": "hello old"}),
        )]),
        ("agent-ask", 0) => Act::Calls(vec![("a2a_echo_agent_ask", json!({"message": "ask me"}))]),
        ("agent-slow", 0) => Act::Calls(vec![(
            "a2a_echo_agent_slow",
            json!({"message": "slow please"}),
        )]),
        // Codex's freeform tool: one string argument.
        ("patch", 0) => Act::Calls(vec![(
            "apply_patch",
            json!({"input": "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch"}),
        )]),
        _ => Act::Text(format!("result: {joined}")),
    }
}

/// Reads an OpenAI request: prompt, round, latest tool results.
fn openai_state(req: &Value) -> (String, usize, Vec<String>) {
    let msgs = req["messages"].as_array().unwrap();
    let prompt = msgs
        .iter()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    let round = msgs
        .iter()
        .filter(|m| m["role"] == "assistant" && m.get("tool_calls").is_some())
        .count();
    let results: Vec<String> = msgs
        .iter()
        .rev()
        .take_while(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or("").to_string())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (prompt, round, results)
}

const USAGE: (u64, u64) = (10, 5);

/// What a provider answers to a request for a route it does not have. The model mocks answer
/// anything but their chat route with it instead of panicking on a missing body.
fn not_found(req: &Recorded) -> Vec<Step> {
    json_response(
        404,
        &json!({"error": {"message": format!("no route {} {}", req.method, req.path),
            "type": "not_found_error"}})
        .to_string(),
    )
}

/// An OpenAI-compatible model that follows [`script`], streaming or not as asked.
pub fn openai_model(req: &Recorded) -> Vec<Step> {
    if req.method != "POST" || !req.path.ends_with("/chat/completions") {
        return not_found(req);
    }
    let body = req.json();
    let (prompt, round, results) = openai_state(&body);
    let act = script(&prompt, round, &results);
    if let Act::Fail = act {
        return json_response(
            500,
            r#"{"error":{"message":"model exploded","type":"server_error","param":null,"code":null}}"#,
        );
    }
    // "json-add": a provider that ignores `stream` and answers with JSON.
    let stream = body["stream"] == true && prompt != "json-add";
    let usage = json!({"prompt_tokens": USAGE.0, "completion_tokens": USAGE.1, "total_tokens": USAGE.0 + USAGE.1});
    if !stream {
        let (message, finish) = match act {
            Act::Calls(calls) => (
                json!({"role": "assistant", "content": null, "tool_calls": calls.iter().enumerate().map(|(i, (n, a))| json!({
                    "id": format!("call_{round}_{i}"), "type": "function",
                    "function": {"name": n, "arguments": a.to_string()}})).collect::<Vec<_>>()}),
                "tool_calls",
            ),
            Act::Text(t) => (json!({"role": "assistant", "content": t}), "stop"),
            Act::Fail => unreachable!(),
        };
        let b = json!({"id": format!("chatcmpl-{round}"), "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage});
        return json_response(200, &b.to_string());
    }
    let mut events: Vec<Value> = vec![json!({"role": "assistant", "content": ""})];
    let finish = match act {
        Act::Calls(calls) => {
            for (i, (n, a)) in calls.iter().enumerate() {
                events.push(json!({"tool_calls": [{"index": i, "id": format!("call_{round}_{i}"), "type": "function",
                    "function": {"name": n, "arguments": ""}}]}));
                let args = a.to_string();
                let (x, y) = args.split_at(args.len() / 2);
                for part in [x, y] {
                    events.push(
                        json!({"tool_calls": [{"index": i, "function": {"arguments": part}}]}),
                    );
                }
            }
            "tool_calls"
        }
        Act::Text(t) => {
            for w in t.split_inclusive(' ') {
                events.push(json!({"content": w}));
            }
            "stop"
        }
        Act::Fail => unreachable!(),
    };
    let mut sse = String::new();
    let id = format!("chatcmpl-{round}");
    for d in events {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "delta": d, "finish_reason": null}]});
        sse.push_str(&format!("data: {c}\n\n"));
    }
    let c = json!({"id": id, "object": "chat.completion.chunk", "created": 1, "model": body["model"],
        "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]});
    sse.push_str(&format!("data: {c}\n\n"));
    if body["stream_options"]["include_usage"] == true {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": 1, "model": body["model"],
            "choices": [], "usage": usage});
        sse.push_str(&format!("data: {c}\n\n"));
    }
    sse.push_str("data: [DONE]\n\n");
    // Uneven TCP writes: events and JSON split anywhere.
    let splits: Vec<usize> = (1..sse.len() / 41).map(|i| i * 41).collect();
    sse_steps(sse.as_bytes(), &splits, Duration::ZERO)
}

/// An Anthropic Messages model that follows [`script`].
pub fn anthropic_model(req: &Recorded) -> Vec<Step> {
    if req.method != "POST" || !req.path.ends_with("/messages") {
        return not_found(req);
    }
    let body = req.json();
    let msgs = body["messages"].as_array().unwrap();
    let prompt = match &msgs[0]["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts[0]["text"].as_str().unwrap_or("").to_string(),
        _ => String::new(),
    };
    let round = msgs
        .iter()
        .filter(|m| {
            m["role"] == "assistant"
                && m["content"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_use"))
        })
        .count();
    let results: Vec<String> = msgs
        .last()
        .and_then(|m| m["content"].as_array())
        .map(|blocks| {
            blocks
                .iter()
                .filter(|b| b["type"] == "tool_result")
                .map(|b| match &b["content"] {
                    Value::String(s) => s.clone(),
                    Value::Array(a) => a[0]["text"].as_str().unwrap_or("").to_string(),
                    _ => String::new(),
                })
                .collect()
        })
        .unwrap_or_default();
    // Extended thinking, as Anthropic enforces it: every assistant turn that used tools must
    // be sent back starting with its signed thinking and redacted thinking, unchanged.
    let thinking = matches!(
        body["thinking"]["type"].as_str(),
        Some("enabled" | "adaptive")
    );
    if thinking {
        let tool_turns = msgs.iter().filter(|m| {
            m["role"] == "assistant"
                && m["content"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_use"))
        });
        for (k, m) in tool_turns.enumerate() {
            let c = m["content"].as_array().unwrap();
            let signed = c.len() > 2
                && c[0]
                    == json!({"type": "thinking", "thinking": format!("thought {k}"), "signature": format!("sig_{k}")})
                && c[1] == json!({"type": "redacted_thinking", "data": format!("redacted_{k}")});
            if !signed {
                return json_response(
                    400,
                    &json!({"type": "error", "error": {"type": "invalid_request_error", "message": format!(
                        "messages.{}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{}`. When `thinking` is enabled, a final `assistant` message must start with a thinking block.",
                        2 * k + 1, c[0]["type"].as_str().unwrap_or("?"))}}).to_string(),
                );
            }
        }
    }
    let act = script(&prompt, round, &results);
    if let Act::Fail = act {
        return json_response(
            500,
            r#"{"type":"error","error":{"type":"api_error","message":"model exploded"}}"#,
        );
    }
    let usage = json!({"input_tokens": USAGE.0, "output_tokens": USAGE.1});
    let thought = [
        json!({"type": "thinking", "thinking": format!("thought {round}"), "signature": format!("sig_{round}")}),
        json!({"type": "redacted_thinking", "data": format!("redacted_{round}")}),
    ];
    if body["stream"] != true {
        let (content, stop) = match act {
            Act::Calls(calls) => (
                thought
                    .iter()
                    .filter(|_| thinking)
                    .cloned()
                    .chain(calls
                    .iter()
                    .enumerate()
                    .map(|(i, (n, a))| json!({"type": "tool_use", "id": format!("toolu_{round}_{i}"), "name": n, "input": a})))
                    .collect::<Vec<_>>(),
                "tool_use",
            ),
            Act::Text(t) => (vec![json!({"type": "text", "text": t})], "end_turn"),
            Act::Fail => unreachable!(),
        };
        let b = json!({"id": format!("msg_{round}"), "type": "message", "role": "assistant", "model": body["model"],
            "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage});
        return json_response(200, &b.to_string());
    }
    let mut sse = String::new();
    let mut ev =
        |name: &str, data: Value| sse.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": format!("msg_{round}"), "type": "message",
        "role": "assistant", "model": body["model"], "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": USAGE.0, "output_tokens": 1}}}),
    );
    // Thinking first: its text, then its signature just before the block stops; then a
    // redacted block.
    let first = if thinking {
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        );
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "thought "}}),
        );
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": round.to_string()}}),
        );
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": format!("sig_{round}")}}),
        );
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        );
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "redacted_thinking", "data": format!("redacted_{round}")}}),
        );
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        );
        2
    } else {
        0
    };
    let stop = match act {
        Act::Calls(calls) => {
            for (c, (n, a)) in calls.iter().enumerate() {
                let i = c + first;
                ev(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": i,
                    "content_block": {"type": "tool_use", "id": format!("toolu_{round}_{c}"), "name": n, "input": {}}}),
                );
                ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": i,
                    "delta": {"type": "input_json_delta", "partial_json": a.to_string()}}),
                );
                ev(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": i}),
                );
            }
            "tool_use"
        }
        Act::Text(t) => {
            ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": first, "content_block": {"type": "text", "text": ""}}),
            );
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": first, "delta": {"type": "text_delta", "text": t}}),
            );
            ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": first}),
            );
            "end_turn"
        }
        Act::Fail => unreachable!(),
    };
    ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
        "usage": {"output_tokens": USAGE.1}}),
    );
    ev("message_stop", json!({"type": "message_stop"}));
    let splits: Vec<usize> = (1..sse.len() / 37).map(|i| i * 37).collect();
    sse_steps(sse.as_bytes(), &splits, Duration::ZERO)
}

/// A Gemini 3 model that follows [`script`] in Gemini's wire format and enforces its rule on
/// thought signatures: every model turn with function calls must come back with the signature
/// it was sent with on its first call (or Google's documented placeholder), else 400.
pub fn gemini_model(req: &Recorded) -> Vec<Step> {
    if req.method != "POST" || !req.path.contains(":") {
        return not_found(req);
    }
    let body = req.json();
    let contents = body["contents"].as_array().unwrap();
    let prompt = contents[0]["parts"][0]["text"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let calls_in = |c: &Value| -> Vec<Value> {
        c["parts"]
            .as_array()
            .map(|p| {
                p.iter()
                    .filter(|p| p.get("functionCall").is_some())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let turns: Vec<&Value> = contents
        .iter()
        .filter(|c| c["role"] == "model" && !calls_in(c).is_empty())
        .collect();
    for (k, t) in turns.iter().enumerate() {
        let sig = calls_in(t)[0]["thoughtSignature"].clone();
        if sig != json!(format!("sig_g{k}")) && sig != json!("skip_thought_signature_validator") {
            return json_response(
                400,
                r#"{"error":{"code":400,"message":"Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly, and missing thought_signature may lead to degraded model performance.","status":"INVALID_ARGUMENT"}}"#,
            );
        }
    }
    let round = turns.len();
    let results: Vec<String> = contents
        .last()
        .and_then(|c| c["parts"].as_array())
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p.pointer("/functionResponse/response"))
                .map(|r| match r.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    _ => r.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let (parts, finish) = match script(&prompt, round, &results) {
        Act::Calls(calls) => (
            calls
                .iter()
                .enumerate()
                .map(|(i, (n, a))| {
                    // Only the first call of a step carries the signature (as Gemini does).
                    let mut p = json!({"functionCall": {"name": n, "args": a}});
                    if i == 0 {
                        p["thoughtSignature"] = json!(format!("sig_g{round}"));
                    }
                    p
                })
                .collect::<Vec<_>>(),
            "STOP",
        ),
        Act::Text(t) => (vec![json!({"text": t})], "STOP"),
        Act::Fail => {
            return json_response(
                500,
                r#"{"error":{"code":500,"message":"model exploded","status":"INTERNAL"}}"#,
            )
        }
    };
    let resp = json!({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
        "usageMetadata": {"promptTokenCount": USAGE.0, "candidatesTokenCount": USAGE.1, "totalTokenCount": USAGE.0 + USAGE.1},
        "modelVersion": "gemini-3-pro-preview", "responseId": format!("resp{round}x")});
    if !req.path.contains("streamGenerateContent") {
        return json_response(200, &resp.to_string());
    }
    let sse = format!("data: {resp}\r\n\r\n");
    let splits: Vec<usize> = (1..sse.len() / 29).map(|i| i * 29).collect();
    sse_steps(sse.as_bytes(), &splits, Duration::ZERO)
}

/// A Cohere v2 chat model that follows [`script`] in Cohere's wire format, enforcing its
/// rules: `p` within 0.01-0.99, tool results as `tool` messages naming a call id it sent.
pub fn cohere_model(req: &Recorded) -> Vec<Step> {
    if req.method != "POST" || !req.path.ends_with("/chat") {
        return not_found(req);
    }
    let body = req.json();
    if let Some(p) = body["p"].as_f64() {
        if !(0.01..=0.99).contains(&p) {
            return json_response(
                400,
                r#"{"message":"invalid request: p must be between 0.01 and 0.99"}"#,
            );
        }
    }
    let msgs = body["messages"].as_array().unwrap();
    let text_of = |c: &Value| match c {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    };
    let prompt = msgs
        .iter()
        .find(|m| m["role"] == "user")
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default();
    let calls: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["role"] == "assistant")
        .filter_map(|m| m["tool_calls"].as_array())
        .flatten()
        .collect();
    for m in msgs.iter().filter(|m| m["role"] == "tool") {
        if !calls.iter().any(|c| c["id"] == m["tool_call_id"]) {
            return json_response(
                400,
                r#"{"message":"invalid request: tool message references an unknown tool call id"}"#,
            );
        }
    }
    let round = msgs
        .iter()
        .filter(|m| m["role"] == "assistant" && m.get("tool_calls").is_some())
        .count();
    let results: Vec<String> = msgs
        .iter()
        .rev()
        .take_while(|m| m["role"] == "tool")
        .map(|m| text_of(&m["content"]))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let act = script(&prompt, round, &results);
    let usage = json!({"billed_units": {"input_tokens": USAGE.0, "output_tokens": USAGE.1},
        "tokens": {"input_tokens": USAGE.0 + 60, "output_tokens": USAGE.1}});
    let (message, finish) = match &act {
        Act::Calls(calls) => (
            json!({"role": "assistant", "tool_plan": "I will call the tool.",
                "tool_calls": calls.iter().enumerate().map(|(i, (n, a))| json!({
                    "id": format!("cohere_{round}_{i}"), "type": "function",
                    "function": {"name": n, "arguments": a.to_string()}})).collect::<Vec<_>>()}),
            "TOOL_CALL",
        ),
        Act::Text(t) => (
            json!({"role": "assistant", "content": [{"type": "text", "text": t}]}),
            "COMPLETE",
        ),
        Act::Fail => {
            return json_response(500, r#"{"message":"model exploded"}"#);
        }
    };
    if body["stream"] != true {
        let b = json!({"id": format!("c{round}"), "finish_reason": finish, "message": message, "usage": usage});
        return json_response(200, &b.to_string());
    }
    let mut sse = String::new();
    let mut ev =
        |name: &str, data: Value| sse.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    ev(
        "message-start",
        json!({"id": format!("c{round}"), "type": "message-start", "delta": {"message": {"role": "assistant",
        "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}),
    );
    match &act {
        Act::Calls(calls) => {
            ev(
                "tool-plan-delta",
                json!({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will call the tool."}}}),
            );
            for (i, (n, a)) in calls.iter().enumerate() {
                ev(
                    "tool-call-start",
                    json!({"type": "tool-call-start", "index": i, "delta": {"message": {"tool_calls": {
                    "id": format!("cohere_{round}_{i}"), "type": "function", "function": {"name": n, "arguments": ""}}}}}),
                );
                ev(
                    "tool-call-delta",
                    json!({"type": "tool-call-delta", "index": i, "delta": {"message": {"tool_calls": {
                    "function": {"arguments": a.to_string()}}}}}),
                );
                ev(
                    "tool-call-end",
                    json!({"type": "tool-call-end", "index": i}),
                );
            }
        }
        Act::Text(t) => {
            ev(
                "content-start",
                json!({"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}}),
            );
            ev(
                "content-delta",
                json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": t}}}}),
            );
            ev("content-end", json!({"type": "content-end", "index": 0}));
        }
        Act::Fail => unreachable!(),
    }
    ev(
        "message-end",
        json!({"type": "message-end", "delta": {"finish_reason": finish, "usage": usage}}),
    );
    sse.push_str("data: [DONE]\n\n");
    let splits: Vec<usize> = (1..sse.len() / 31).map(|i| i * 31).collect();
    sse_steps(sse.as_bytes(), &splits, Duration::ZERO)
}

/// Reads a Responses request: prompt (the first user message), round (function calls in the
/// input), latest tool results.
fn responses_state(req: &Value) -> (String, usize, Vec<String>) {
    let items = match &req["input"] {
        Value::String(s) => return (s.clone(), 0, Vec::new()),
        Value::Array(items) => items.clone(),
        _ => Vec::new(),
    };
    let text = |c: &Value| match c {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts[0]["text"].as_str().unwrap_or("").to_string(),
        _ => String::new(),
    };
    let prompt = items
        .iter()
        .find(|i| i["role"] == "user")
        .map(|i| text(&i["content"]))
        .unwrap_or_default();
    let calls = ["function_call", "custom_tool_call"];
    let round = items
        .iter()
        .filter(|i| calls.contains(&i["type"].as_str().unwrap_or("")))
        .count();
    let results = items
        .iter()
        .rev()
        .take_while(|i| i["type"].as_str().is_some_and(|t| t.ends_with("_output")))
        .map(|i| i["output"].as_str().unwrap_or("").to_string())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (prompt, round, results)
}

/// An OpenAI Responses server (`POST /v1/responses`) that follows [`script`], as OpenAI checks
/// it: `input` items must be well formed (a reasoning item needs OpenAI's own id or
/// `encrypted_content`; item ids must be OpenAI's), and `previous_response_id` must be one it
/// issued (`resp_upstream_...`). Also `GET /v1/responses/resp_upstream_known`.
pub fn openai_responses_model(req: &Recorded) -> Vec<Step> {
    let not_found = |id: &str| {
        json_response(
            404,
            &json!({"error": {"message": format!("Response with id '{id}' not found."),
                "type": "invalid_request_error", "param": "previous_response_id", "code": null}})
            .to_string(),
        )
    };
    // Ids deleted upstream (process-wide: the mock's ids are the same in every test).
    static DELETED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let deleted = |id: &str| DELETED.lock().unwrap().iter().any(|d| d == id);
    if req.method == "DELETE" {
        let id = req.path.rsplit('/').next().unwrap_or("");
        if !id.starts_with("resp_upstream_") || deleted(id) {
            return not_found(id);
        }
        DELETED.lock().unwrap().push(id.to_string());
        return json_response(
            200,
            &json!({"id": id, "object": "response", "deleted": true}).to_string(),
        );
    }
    if req.method == "GET" {
        return match req.path.rsplit('/').next() {
            Some("resp_upstream_known") => json_response(
                200,
                &json!({"id": "resp_upstream_known", "object": "response", "status": "completed",
                    "model": "gpt-test", "output": [], "created_at": 1})
                .to_string(),
            ),
            Some(id) => not_found(id),
            None => not_found(""),
        };
    }
    let body = req.json();
    if let Some(id) = body["previous_response_id"].as_str() {
        if !id.starts_with("resp_upstream_") || deleted(id) {
            return not_found(id);
        }
    }
    for item in body["input"].as_array().into_iter().flatten() {
        let id = item["id"].as_str().unwrap_or("");
        let bad_id = !id.is_empty() && id.contains("_gw_");
        let bad_reasoning = item["type"] == "reasoning"
            && item["encrypted_content"]
                .as_str()
                .is_some_and(|e| !e.starts_with("openai:"));
        if bad_id || bad_reasoning {
            return json_response(
                400,
                &json!({"error": {"message": format!("Invalid input item: {item}"),
                    "type": "invalid_request_error", "param": "input", "code": null}})
                .to_string(),
            );
        }
    }
    let (prompt, round, results) = responses_state(&body);
    let (prompt, round) = match body["previous_response_id"].as_str() {
        // The upstream's own state: a conversation it holds.
        Some(_) => ("continued".to_string(), 1),
        None => (prompt, round),
    };
    let act = match prompt.as_str() {
        "continued" if !results.is_empty() => Act::Text(format!("result: {}", results.join(" | "))),
        "continued" => Act::Text("continued upstream".into()),
        _ => script(&prompt, round, &results),
    };
    if let Act::Fail = act {
        return json_response(
            500,
            r#"{"error":{"message":"model exploded","type":"server_error","param":null,"code":null}}"#,
        );
    }
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
    let id = format!(
        "resp_upstream_{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let custom: Vec<String> = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["type"] == "custom")
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect();
    let output: Vec<Value> = match &act {
        Act::Calls(calls) => calls
            .iter()
            .enumerate()
            .map(|(i, (n, a))| {
                let call_id = format!("call_{round}_{i}");
                if custom.iter().any(|c| c == n) {
                    json!({"type": "custom_tool_call", "id": format!("ctc_{round}{i}"), "call_id": call_id,
                        "name": n, "input": a["input"], "status": "completed"})
                } else {
                    json!({"type": "function_call", "id": format!("fc_{round}{i}"), "call_id": call_id,
                        "name": n, "arguments": a.to_string(), "status": "completed"})
                }
            })
            .collect(),
        Act::Text(t) => vec![json!({"type": "message", "id": format!("msg_{round}"), "status": "completed",
            "role": "assistant", "content": [{"type": "output_text", "text": t, "annotations": []}]})],
        Act::Fail => unreachable!(),
    };
    let usage = json!({"input_tokens": USAGE.0, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": USAGE.1, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": USAGE.0 + USAGE.1});
    let response = |status: &str, output: &[Value], usage: &Value| {
        json!({"id": id, "object": "response", "created_at": 1, "status": status, "error": null,
            "incomplete_details": null, "model": body["model"], "output": output,
            "parallel_tool_calls": true, "previous_response_id": body["previous_response_id"],
            "store": body["store"].as_bool().unwrap_or(true), "text": {"format": {"type": "text"}},
            "tool_choice": "auto", "tools": body["tools"].as_array().cloned().unwrap_or_default(),
            "usage": usage, "metadata": {}})
    };
    if body["stream"] != true {
        return json_response(200, &response("completed", &output, &usage).to_string());
    }
    let mut events = vec![
        json!({"type": "response.created", "response": response("in_progress", &[], &Value::Null)}),
        json!({"type": "response.in_progress", "response": response("in_progress", &[], &Value::Null)}),
    ];
    for (i, item) in output.iter().enumerate() {
        let mut added = item.clone();
        added["status"] = json!("in_progress");
        match item["type"].as_str().unwrap() {
            "message" => {
                added["content"] = json!([]);
                events.push(
                    json!({"type": "response.output_item.added", "output_index": i, "item": added}),
                );
                events.push(json!({"type": "response.content_part.added", "item_id": item["id"], "output_index": i,
                    "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}));
                let text = item["content"][0]["text"].as_str().unwrap();
                for w in text.split_inclusive(' ') {
                    events.push(json!({"type": "response.output_text.delta", "item_id": item["id"], "output_index": i,
                        "content_index": 0, "delta": w, "logprobs": []}));
                }
                events.push(json!({"type": "response.output_text.done", "item_id": item["id"], "output_index": i,
                    "content_index": 0, "text": text, "logprobs": []}));
                events.push(json!({"type": "response.content_part.done", "item_id": item["id"], "output_index": i,
                    "content_index": 0, "part": item["content"][0]}));
            }
            "function_call" => {
                added["arguments"] = json!("");
                events.push(
                    json!({"type": "response.output_item.added", "output_index": i, "item": added}),
                );
                let args = item["arguments"].as_str().unwrap();
                let (x, y) = args.split_at(args.len() / 2);
                for part in [x, y] {
                    events.push(json!({"type": "response.function_call_arguments.delta", "item_id": item["id"],
                        "output_index": i, "delta": part}));
                }
                events.push(
                    json!({"type": "response.function_call_arguments.done", "item_id": item["id"],
                    "output_index": i, "arguments": args}),
                );
            }
            _ => {
                added["input"] = json!("");
                events.push(
                    json!({"type": "response.output_item.added", "output_index": i, "item": added}),
                );
                events.push(
                    json!({"type": "response.custom_tool_call_input.delta", "item_id": item["id"],
                    "output_index": i, "delta": item["input"]}),
                );
                events.push(
                    json!({"type": "response.custom_tool_call_input.done", "item_id": item["id"],
                    "output_index": i, "input": item["input"]}),
                );
            }
        }
        events.push(json!({"type": "response.output_item.done", "output_index": i, "item": item}));
    }
    events.push(
        json!({"type": "response.completed", "response": response("completed", &output, &usage)}),
    );
    let mut sse = String::new();
    for (n, mut e) in events.into_iter().enumerate() {
        e["sequence_number"] = json!(n);
        sse.push_str(&format!(
            "event: {}\ndata: {e}\n\n",
            e["type"].as_str().unwrap()
        ));
    }
    let splits: Vec<usize> = (1..sse.len() / 37).map(|i| i * 37).collect();
    sse_steps(sse.as_bytes(), &splits, Duration::ZERO)
}
