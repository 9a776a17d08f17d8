//! Golden tests for the front doors, door x dialect: every cell of the matrix in docs.
//!
//! - `golden/doors/messages/requests/<case>.json` (a Messages request) ->
//!   `<case>.canonical.json` (the canonical chat request and what was dropped, or the error) ->
//!   `<case>.<dialect>.json` (what each dialect sends; Anthropic providers are normally sent the
//!   request as it came, this is the MCP loop's path).
//! - `golden/<dialect>/<case>.response.json` (native) -> `<case>.response.messages.json`.
//! - `golden/<dialect>/<case>.stream.sse` (native) -> `<case>.stream.messages.sse`, checked whole,
//!   byte by byte and split in two at every byte, and against the Messages event grammar.
//!
//! The Responses door has the same three kinds of fixtures under `doors/responses/requests`,
//! `.response.responses.json` and `.stream.responses.sse`.
//!
//! `UPDATE_GOLDEN=1 cargo test -p filters --test doors` rewrites the expected files.

use std::path::Path;

use bytes::BytesMut;
use filters::dialects::{self, Dialect, RequestOptions, StreamTranslator};
use filters::doors::messages::{self, MessagesEncoder, PassthroughObserver};
use filters::doors::responses::{self, ResponseMeta, ResponsesEncoder};
use filters::doors::StreamEncoder;
use filters::openai::ChatCompletionRequest;
use filters::stream_relay::StreamEnd;
use serde_json::{json, Value};

mod support;
use support::{check_text as check, files, stream_translator, CREATED};

const DIALECTS: [Dialect; 4] = [
    Dialect::Openai,
    Dialect::Anthropic,
    Dialect::Google,
    Dialect::Cohere,
];

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap() + "\n"
}

/// Every request fixture of a door through its decoder (`<case>.canonical.json`) and on to every
/// dialect (`<case>.<dialect>.json`). `decode` gives the canonical request and what else the
/// fixture should record, or the error as JSON.
fn request_matrix(
    sub: &str,
    decode: impl Fn(&[u8]) -> Result<(ChatCompletionRequest, Value), Value>,
) {
    for input in files(sub, ".json")
        .into_iter()
        .filter(|p| p.file_stem().unwrap().to_str().unwrap().split('.').count() == 1)
    {
        let stem = input.file_stem().unwrap().to_str().unwrap().to_string();
        let decoded = decode(&std::fs::read(&input).unwrap());
        let canonical = match &decoded {
            Ok((chat, info)) => {
                let mut v = json!({"chat": chat});
                for (k, x) in info.as_object().unwrap() {
                    v[k] = x.clone();
                }
                v
            }
            Err(e) => e.clone(),
        };
        check(
            &input.with_file_name(format!("{stem}.canonical.json")),
            &pretty(&canonical),
        );
        let Ok((chat, _)) = decoded else { continue };
        for dialect in DIALECTS {
            let opts = RequestOptions {
                default_max_tokens: 1024,
                ..Default::default()
            };
            let got = match dialects::translate_request(dialect, &chat, &opts) {
                Ok(n) => {
                    json!({"body": serde_json::from_slice::<Value>(&n.body).unwrap(), "dropped": n.dropped})
                }
                Err(e) => json!({"error": e.message, "param": e.param}),
            };
            check(
                &input.with_file_name(format!("{stem}.{}.json", dialect.name())),
                &pretty(&got),
            );
        }
    }
}

/// Every dialect's response fixture as a canonical body, encoded by a door into
/// `<case>.response.<door>.json` (a provider's own failure is recorded as the error).
fn response_matrix(door: &str, encode: impl Fn(&[u8]) -> Value) {
    for d in DIALECTS {
        for input in files(d.name(), ".response.json") {
            let native = std::fs::read(&input).unwrap();
            let canonical = match d {
                Dialect::Openai => Ok(native),
                _ => dialects::translate_response_with(
                    d,
                    &native,
                    "requested-model",
                    CREATED,
                    support::json_tool(&input),
                )
                .map(|r| r.body),
            };
            let got = match canonical {
                Ok(body) => encode(&body),
                Err(e) => json!({"error": e.message, "code": e.code}),
            };
            let name = input
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .replace(".response.json", &format!(".response.{door}.json"));
            check(&input.with_file_name(name), &pretty(&got));
        }
    }
}

/// A dialect's stream fixture, fed in `chunks`, through its translator and a door's encoder.
fn encode_stream(
    d: Dialect,
    input: &Path,
    chunks: &[&[u8]],
    mut encoder: Box<dyn StreamEncoder>,
) -> String {
    let mut inner = stream_translator(d, input, true);
    let (mut mid, mut out) = (BytesMut::new(), BytesMut::new());
    for c in chunks {
        inner.feed(c, &mut mid).unwrap();
        encoder.feed(&mid, &mut out);
        mid.clear();
    }
    inner.finish(StreamEnd::Clean, &mut mid);
    encoder.feed(&mid, &mut out);
    String::from_utf8(out.to_vec()).expect("UTF-8")
}

/// Every dialect's stream fixture through a door's encoder into `<case>.stream.<door>.sse`:
/// checked whole, byte by byte and split in two at every byte (the output must never change),
/// and against the door's event grammar.
fn stream_matrix(
    door: &str,
    encoder: impl Fn() -> Box<dyn StreamEncoder>,
    grammar: fn(&str, &str),
) {
    for d in DIALECTS {
        for input in files(d.name(), ".stream.sse") {
            let raw = std::fs::read(&input).unwrap();
            let got = encode_stream(d, &input, &[&raw], encoder());
            let name = input
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .replace(".stream.sse", &format!(".stream.{door}.sse"));
            check(&input.with_file_name(name), &got);
            grammar(&got, &input.display().to_string());
            let bytes: Vec<&[u8]> = raw.chunks(1).collect();
            assert_eq!(
                encode_stream(d, &input, &bytes, encoder()),
                got,
                "byte by byte: {}",
                input.display()
            );
            for at in 0..=raw.len() {
                let (a, b) = raw.split_at(at);
                assert_eq!(
                    encode_stream(d, &input, &[a, b], encoder()),
                    got,
                    "split at {at}: {}",
                    input.display()
                );
            }
        }
    }
}

// ---- the Messages row -------------------------------------------------------------------------

#[test]
fn messages_requests_through_every_dialect() {
    request_matrix("doors/messages/requests", |body| {
        messages::decode_request(body)
            .map(|d| (d.chat, json!({"dropped": d.dropped})))
            .map_err(|e| json!({"error": e.message, "param": e.param}))
    });
}

#[test]
fn responses_of_every_dialect_as_messages() {
    response_matrix("messages", |body| {
        let v: Value = serde_json::from_slice(&messages::encode_response(body).unwrap()).unwrap();
        assert_eq!(v["type"], "message");
        assert!(v["id"].as_str().unwrap().starts_with("msg_"));
        assert!(v["stop_reason"].is_string());
        v
    });
}

/// The Messages stream grammar Anthropic's SDKs rely on.
fn assert_grammar(stream: &str, what: &str) {
    let events: Vec<(String, Value)> = stream
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap();
                }
            }
            assert_eq!(data["type"], name.as_str(), "{what}: {e}");
            (name, data)
        })
        .collect();
    assert_eq!(events[0].0, "message_start", "{what}");
    let last = &events.last().unwrap().0;
    let failed = last == "error";
    if !failed {
        assert_eq!(last, "message_stop", "{what}");
        assert_eq!(events[events.len() - 2].0, "message_delta", "{what}");
    }
    let mut open: Option<u64> = None;
    let mut next = 0;
    for (name, data) in &events {
        match name.as_str() {
            "content_block_start" => {
                assert!(open.is_none(), "{what}: block opened inside another");
                assert_eq!(data["index"], next, "{what}");
                open = Some(next);
                next += 1;
            }
            "content_block_delta" => assert_eq!(data["index"].as_u64(), open, "{what}"),
            "content_block_stop" => {
                assert_eq!(data["index"].as_u64(), open, "{what}");
                open = None;
            }
            "message_delta" => assert!(open.is_none(), "{what}: message_delta with a block open"),
            _ => {}
        }
    }
}

#[test]
fn streams_of_every_dialect_as_messages_at_every_split() {
    stream_matrix(
        "messages",
        || Box::new(MessagesEncoder::new("requested-model")),
        assert_grammar,
    );
}

/// A relayed Anthropic stream reaches the client byte for byte, at any split, with its usage
/// and tool calls read on the way; a cut stream ends with Anthropic's error event.
#[test]
fn relayed_anthropic_streams_pass_unchanged() {
    for input in files("anthropic", ".stream.sse") {
        let raw = std::fs::read(&input).unwrap();
        for at in 0..=raw.len() {
            let (a, b) = raw.split_at(at);
            let mut t = PassthroughObserver::new(1 << 20);
            let mut out = BytesMut::new();
            t.feed(a, &mut out).unwrap();
            t.feed(b, &mut out).unwrap();
            t.finish(StreamEnd::Clean, &mut out);
            // A stream that ends with `message_stop` or the provider's own `error` is complete.
            let complete = raw.windows(12).any(|w| w == b"message_stop")
                || raw.windows(12).any(|w| w == b"event: error");
            if complete {
                assert_eq!(&out[..], &raw[..], "{}", input.display());
                if let Some(u) = t.usage() {
                    assert!(u.total_tokens > 0, "{}", input.display());
                } else {
                    panic!("no usage read from {}", input.display());
                }
            } else {
                assert!(out.starts_with(&raw));
                assert!(String::from_utf8_lossy(&out[raw.len()..]).contains("event: error"));
            }
        }
        let mut t = PassthroughObserver::new(1 << 20);
        let mut out = BytesMut::new();
        t.feed(&raw[..raw.len() / 2], &mut out).unwrap();
        t.finish(
            StreamEnd::Failed {
                message: "reset".into(),
                code: "upstream_error",
            },
            &mut out,
        );
        assert!(String::from_utf8_lossy(&out).ends_with("\n\n"));
        assert!(String::from_utf8_lossy(&out).contains("event: error\ndata: "));
    }
}

#[test]
fn errors_take_anthropic_shapes_and_statuses() {
    let cases = [
        (400, "invalid_request_error", 400),
        (401, "authentication_error", 401),
        (403, "permission_error", 403),
        (404, "not_found_error", 404),
        (413, "request_too_large", 413),
        (429, "rate_limit_error", 429),
        (500, "api_error", 500),
        (502, "api_error", 502),
        (503, "overloaded_error", 529),
        (504, "timeout_error", 504),
    ];
    for (status, kind, want_status) in cases {
        let body = br#"{"error":{"message":"boom","type":"x","param":null,"code":"some_code"}}"#;
        let (s, b) = messages::encode_error(status, body);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(s, want_status);
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], kind);
        assert_eq!(v["error"]["message"], "boom (some_code)");
    }
}

// ---- the Responses row ------------------------------------------------------------------------

/// A transparent stand-in for the gateway's AEAD sealer: golden files show what is sealed.
struct TestSealer;

impl responses::Sealer for TestSealer {
    fn seal(&self, plaintext: &[u8]) -> String {
        format!(
            "{}{}",
            responses::SEAL_PREFIX,
            String::from_utf8_lossy(plaintext)
        )
    }
    fn open(&self, sealed: &str) -> Option<Vec<u8>> {
        let body = sealed.strip_prefix(responses::SEAL_PREFIX)?;
        body.starts_with('{').then(|| body.as_bytes().to_vec())
    }
}

fn meta() -> ResponseMeta {
    ResponseMeta {
        id: "resp_gw_test".into(),
        created_at: CREATED,
        // The fixtures' tool names that stand for `custom` tools.
        custom_tools: vec!["apply_patch".into()],
        previous_response_id: None,
        store: true,
        sealer: Some(responses::SealerRef(std::sync::Arc::new(TestSealer))),
        show_encrypted: true,
    }
}

/// Reasoning state survives a stateless round trip (Codex's `store: false`): the answer's
/// items, replayed as input, put the provider's state back on the turn; altered state is
/// refused, a provider's own is left alone.
#[test]
fn sealed_reasoning_round_trips_and_refuses_tampering() {
    let chat = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
            "content": null, "reasoning_content": "thinking about it",
            "thinking_blocks": [{"type": "thinking", "thinking": "t", "signature": "sig_0"}],
            "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "apply_patch", "arguments": "{\"input\":\"x\"}"},
                "extra_content": {"google": {"thought_signature": "gsig"}}}]}}]});
    let mut m = meta();
    m.show_encrypted = false;
    let enc = responses::encode_response(chat.to_string().as_bytes(), &m).unwrap();
    let shown: Value = serde_json::from_slice(&enc.body).unwrap();
    assert!(
        shown["output"][0].get("encrypted_content").is_none(),
        "not asked for"
    );
    let doc: Value = serde_json::from_slice(&enc.document.unwrap()).unwrap();
    let reasoning = &doc["output"][0];
    assert_eq!(reasoning["type"], "reasoning");
    let sealed = reasoning["encrypted_content"].as_str().unwrap();
    assert_eq!(doc["output"][1]["type"], "custom_tool_call");
    let mut input = vec![json!({"role": "user", "content": "go"})];
    input.extend(doc["output"].as_array().unwrap().iter().cloned());
    input.push(json!({"type": "custom_tool_call_output", "call_id": "call_1", "output": "done"}));
    let req = |input: &Vec<Value>| {
        json!({"model": "m", "input": input, "tools": [{"type": "custom", "name": "apply_patch"}]})
            .to_string()
    };
    let d = responses::decode_request_with(req(&input).as_bytes(), Some(&TestSealer)).unwrap();
    let assistant = &d.chat.messages[1];
    assert_eq!(assistant.role, "assistant");
    assert_eq!(
        assistant.extra["thinking_blocks"],
        json!([{"type": "thinking", "thinking": "t", "signature": "sig_0"}])
    );
    let call = &assistant.tool_calls.as_ref().unwrap()[0];
    assert_eq!(
        call.function.as_ref().unwrap().arguments.as_deref(),
        Some("{\"input\":\"x\"}")
    );
    assert_eq!(
        call.extra["extra_content"],
        json!({"google": {"thought_signature": "gsig"}})
    );
    // Altered: refused with its own code.
    let mut bad = input.clone();
    bad[1]["encrypted_content"] = json!(sealed.replace("sig_0", "sig_X").replacen('{', "x", 1));
    let e = responses::decode_request_with(req(&bad).as_bytes(), Some(&TestSealer)).unwrap_err();
    assert_eq!(e.code, Some("invalid_encrypted_content"));
    assert_eq!(e.param, Some("input"));
    // Without the gateway's key (a stateless decoder) a sealed item is refused too.
    assert!(responses::decode_request(req(&input).as_bytes()).is_err());
    // A provider's own encrypted_content is not the gateway's to open: left for that provider.
    let mut foreign = input.clone();
    foreign[1]["encrypted_content"] = json!("gAAAAB-openai-state");
    let d = responses::decode_request_with(req(&foreign).as_bytes(), Some(&TestSealer)).unwrap();
    assert_eq!(d.foreign_reasoning, 1);
    assert!(d.chat.messages[1].extra.get("thinking_blocks").is_none());
}

/// What is relayed to an OpenAI Responses upstream carries nothing only the gateway reads.
#[test]
fn relays_to_openai_drop_gateway_items() {
    let body = json!({"model": "alias", "input": [
        {"role": "user", "content": "hi", "id": "msg_gw_1_in0"},
        {"type": "reasoning", "id": "rs_resp_gw_1", "summary": [], "encrypted_content": "igw1:x"},
        {"type": "reasoning", "id": "rs_abc", "summary": [], "encrypted_content": "gAAAA"},
        {"type": "function_call", "id": "fc_gw_call_1", "call_id": "call_1", "name": "f", "arguments": "{}"}
    ]});
    let (out, stream) = responses::relay_body(
        body.to_string().as_bytes(),
        "gpt-5",
        &Default::default(),
        Some("Be brief."),
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert!(!stream);
    assert_eq!(v["model"], "gpt-5");
    assert_eq!(v["instructions"], "Be brief.");
    let items = v["input"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(items[0].get("id").is_none());
    assert_eq!(items[1]["id"], "rs_abc");
    assert!(items[2].get("id").is_none());
    assert_eq!(items[2]["call_id"], "call_1");
}

#[test]
fn responses_requests_through_every_dialect() {
    request_matrix("doors/responses/requests", |body| {
        responses::decode_request(body)
            .map(|d| {
                let info = json!({"dropped": d.dropped, "hosted_tools": d.hosted_tools,
                    "custom_tools": d.custom_tools, "store": d.store,
                    "encrypted_reasoning": d.encrypted_reasoning, "foreign_reasoning": d.foreign_reasoning, "native_only": d.native_only});
                (d.chat, info)
            })
            .map_err(|e| json!({"error": e.message, "param": e.param}))
    });
}

#[test]
fn responses_of_every_dialect_as_response_objects() {
    response_matrix("responses", |body| {
        let v: Value =
            serde_json::from_slice(&responses::encode_response(body, &meta()).unwrap().body)
                .unwrap();
        assert_eq!(v["object"], "response");
        assert!(v["output"].is_array());
        v
    });
}

/// The Responses stream grammar the OpenAI SDK's stream helper relies on.
fn assert_responses_grammar(stream: &str, what: &str) {
    let events: Vec<Value> = stream
        .split("\n\n")
        // Keep-alive comments are SSE the SDKs skip.
        .filter(|e| !e.is_empty() && !e.starts_with(':'))
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            let v: Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["type"], name, "{what}");
            v
        })
        .collect();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i as u64, "{what}");
    }
    assert_eq!(events[0]["type"], "response.created", "{what}");
    assert_eq!(events[1]["type"], "response.in_progress", "{what}");
    let last = events.last().unwrap()["type"].as_str().unwrap();
    assert!(
        matches!(
            last,
            "response.completed" | "response.incomplete" | "response.failed"
        ),
        "{what}: ends with {last}"
    );
    let mut open: Option<u64> = None;
    for e in &events {
        match e["type"].as_str().unwrap() {
            "response.output_item.added" => {
                assert!(open.is_none(), "{what}: item inside an item");
                open = e["output_index"].as_u64();
            }
            "response.output_item.done" => {
                assert_eq!(e["output_index"].as_u64(), open, "{what}");
                open = None;
            }
            t if t.ends_with(".delta") => assert_eq!(e["output_index"].as_u64(), open, "{what}"),
            _ => {}
        }
    }
    if last != "response.failed" {
        let r = &events.last().unwrap()["response"];
        assert_eq!(
            r["output"].as_array().unwrap().len() as u64,
            events
                .iter()
                .filter(|e| e["type"] == "response.output_item.done")
                .count() as u64,
            "{what}"
        );
    }
}

#[test]
fn streams_of_every_dialect_as_responses_events_at_every_split() {
    stream_matrix(
        "responses",
        || Box::new(ResponsesEncoder::new(meta(), "requested-model")),
        assert_responses_grammar,
    );
}
