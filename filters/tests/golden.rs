//! Golden tests for the dialect translations.
//!
//! - `golden/requests/<case>.json` (OpenAI request) -> `<case>.<dialect>.json`
//!   (`{"body": native body, "dropped": [...]}` or `{"error": message}`).
//! - `golden/<dialect>/<case>.response.json` (native) -> `<case>.response.openai.json`.
//! - `golden/<dialect>/<case>.stream.sse` (native SSE) -> `<case>.stream.openai.sse`, checked
//!   whole, byte by byte, and split in two at every byte (the output must never change).
//!
//! `UPDATE_GOLDEN=1 cargo test -p filters --test golden` rewrites the expected files; review the
//! diff before committing.

use std::path::Path;

use bytes::BytesMut;
use filters::dialects::{self, Dialect, RequestOptions};
use filters::openai::ChatCompletionRequest;
use filters::stream_relay::StreamEnd;
use serde_json::{json, Value};

mod support;
use support::{check_text, files, json_tool, update, CREATED};

const DIALECTS: [Dialect; 3] = [Dialect::Anthropic, Dialect::Google, Dialect::Cohere];

fn check_json(expected_path: &Path, got: Value) {
    if update() {
        std::fs::write(
            expected_path,
            serde_json::to_string_pretty(&got).unwrap() + "\n",
        )
        .unwrap();
        return;
    }
    let text = std::fs::read_to_string(expected_path).unwrap_or_else(|_| {
        panic!(
            "missing {} (run with UPDATE_GOLDEN=1)",
            expected_path.display()
        )
    });
    let want: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got, want, "{}", expected_path.display());
}

#[test]
fn requests() {
    for input in files("requests", ".json")
        .into_iter()
        .filter(|p| p.file_stem().unwrap().to_str().unwrap().split('.').count() == 1)
    {
        let req: ChatCompletionRequest =
            serde_json::from_slice(&std::fs::read(&input).unwrap()).unwrap();
        for d in DIALECTS {
            let got = match dialects::translate_request(
                d,
                &req,
                &RequestOptions {
                    default_max_tokens: 1024,
                    ..Default::default()
                },
            ) {
                Ok(n) => {
                    assert_eq!(n.stream, req.stream.unwrap_or(false));
                    json!({"body": serde_json::from_slice::<Value>(&n.body).unwrap(), "dropped": n.dropped})
                }
                Err(e) => json!({"error": e.message, "param": e.param}),
            };
            let stem = input.file_stem().unwrap().to_str().unwrap();
            check_json(
                &input.with_file_name(format!("{stem}.{}.json", d.name())),
                got,
            );
        }
    }
}

#[test]
fn responses() {
    for d in DIALECTS {
        for input in files(d.name(), ".response.json") {
            let got = dialects::translate_response_with(
                d,
                &std::fs::read(&input).unwrap(),
                "requested-model",
                CREATED,
                json_tool(&input),
            );
            // A provider's own failure (a malformed tool call, a timeout) is an error, with
            // its code, never an empty `stop`.
            let body = match got {
                Ok(got) => {
                    let body: Value = serde_json::from_slice(&got.body).unwrap();
                    assert_eq!(
                        got.usage.as_ref().map(|u| u.total_tokens),
                        body["usage"]["total_tokens"].as_u64()
                    );
                    body
                }
                Err(e) => json!({"error": e.message, "code": e.code}),
            };
            let name = input
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .replace(".response.json", ".response.openai.json");
            check_json(&input.with_file_name(name), body);
        }
    }
}

fn translate_stream(
    d: Dialect,
    chunks: &[&[u8]],
    include_usage: bool,
    json_tool: Option<&str>,
) -> String {
    let mut t = dialects::stream_translator_with(
        d,
        "requested-model",
        CREATED,
        include_usage,
        1 << 20,
        json_tool,
    );
    let mut out = BytesMut::new();
    for c in chunks {
        t.feed(c, &mut out).unwrap();
    }
    t.finish(StreamEnd::Clean, &mut out);
    String::from_utf8(out.to_vec()).expect("translated stream is UTF-8")
}

#[test]
fn streams_and_every_split() {
    for d in DIALECTS {
        for input in files(d.name(), ".stream.sse") {
            let raw = std::fs::read(&input).unwrap();
            let got = translate_stream(d, &[&raw], true, json_tool(&input));
            let name = input
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .replace(".stream.sse", ".stream.openai.sse");
            check_text(&input.with_file_name(name), &got);
            assert_eq!(
                got.matches("data: [DONE]").count(),
                1,
                "{}",
                input.display()
            );
            // Every chunk is valid JSON in OpenAI's chunk (or error) shape.
            for ev in got.split("\n\n").filter(|e| e.starts_with("data: {")) {
                let v: Value = serde_json::from_str(&ev[6..]).unwrap();
                assert!(
                    v.get("error").is_some() || v["object"] == "chat.completion.chunk",
                    "{ev}"
                );
            }
            // Property: any split of the upstream bytes gives the same output.
            let bytes: Vec<&[u8]> = raw.chunks(1).collect();
            assert_eq!(
                translate_stream(d, &bytes, true, json_tool(&input)),
                got,
                "byte by byte: {}",
                input.display()
            );
            for at in 0..=raw.len() {
                let (a, b) = raw.split_at(at);
                assert_eq!(
                    translate_stream(d, &[a, b], true, json_tool(&input)),
                    got,
                    "split at {at}: {}",
                    input.display()
                );
            }
            // Without include_usage there is no usage-only chunk, and nothing else changes.
            let plain = translate_stream(d, &[&raw], false, json_tool(&input));
            let usage_chunks: Vec<&str> = got
                .split("\n\n")
                .filter(|e| e.contains("\"choices\":[]"))
                .collect();
            let mut expect = got.clone();
            for u in &usage_chunks {
                expect = expect.replace(&format!("{u}\n\n"), "");
            }
            assert_eq!(plain, expect, "{}", input.display());
        }
    }
}

#[test]
fn truncated_streams_end_with_error_and_done() {
    for d in DIALECTS {
        for input in files(d.name(), ".stream.sse") {
            let raw = std::fs::read(&input).unwrap();
            let mut t = dialects::stream_translator(d, "m", CREATED, true, 0);
            let mut out = BytesMut::new();
            t.feed(&raw[..raw.len() / 2], &mut out).unwrap();
            t.finish(
                StreamEnd::Failed {
                    message: "reset".into(),
                    code: "upstream_error",
                },
                &mut out,
            );
            let text = String::from_utf8(out.to_vec()).unwrap();
            assert!(text.ends_with("data: [DONE]\n\n"), "{}", input.display());
            assert_eq!(text.matches("[DONE]").count(), 1);
            if !text.contains("\"error\"") {
                panic!("no error event for a truncated stream: {}", input.display());
            }
        }
    }
}
