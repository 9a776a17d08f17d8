//! Throughput of the pure transforms: `cargo bench -p filters`.
//!
//! Stream translation is measured on the recorded fixtures (tests/golden), repeated into one
//! long stream of deltas so the per-event cost dominates, and reported in MB/s of upstream bytes.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use filters::dialects::{self, Dialect};
use filters::json_object::RawObject;
use filters::stream_relay::{OpenAiStreamRelay, StreamEnd};
use filters::{sse::SseDecoder, usage};

/// A long native stream: the fixture's opening events, its delta events repeated `n` times,
/// then its closing events.
fn long_stream(fixture: &str, delta_marker: &str, n: usize) -> Vec<u8> {
    let text = std::fs::read_to_string(format!(
        "{}/tests/golden/{fixture}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let sep = if text.contains("\r\n\r\n") {
        "\r\n\r\n"
    } else {
        "\n\n"
    };
    let events: Vec<&str> = text.split(sep).filter(|e| !e.is_empty()).collect();
    let first = events
        .iter()
        .position(|e| e.contains(delta_marker))
        .unwrap();
    let last = events
        .iter()
        .rposition(|e| e.contains(delta_marker))
        .unwrap();
    let mut out = String::new();
    for e in &events[..first] {
        out.push_str(e);
        out.push_str(sep);
    }
    for _ in 0..n {
        for e in &events[first..=last] {
            out.push_str(e);
            out.push_str(sep);
        }
    }
    for e in &events[last + 1..] {
        out.push_str(e);
        out.push_str(sep);
    }
    out.into_bytes()
}

fn openai_stream(n: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!("data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"));
    }
    s.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

/// Feeds `data` in 1 KiB chunks, as a network read would.
fn translate(d: Dialect, data: &[u8]) -> usize {
    let mut t = dialects::stream_translator(d, "m", 1, true, 0);
    let mut out = BytesMut::with_capacity(data.len() * 2);
    for c in data.chunks(1024) {
        t.feed(c, &mut out).unwrap();
    }
    t.finish(StreamEnd::Clean, &mut out);
    out.len()
}

fn streams(c: &mut Criterion) {
    let cases = [
        (Dialect::Openai, openai_stream(500)),
        (
            Dialect::Anthropic,
            long_stream("anthropic/text.stream.sse", "content_block_delta", 500),
        ),
        (
            Dialect::Google,
            long_stream("google/text.stream.sse", "\"text\": \"lo", 500),
        ),
        (
            Dialect::Cohere,
            long_stream("cohere/text.stream.sse", "content-delta", 500),
        ),
    ];
    let mut g = c.benchmark_group("stream_translation");
    for (d, data) in &cases {
        assert!(
            translate(*d, data) > data.len() / 4,
            "{d:?} produced output"
        );
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(d.name(), |b| b.iter(|| translate(*d, black_box(data))));
    }
    g.finish();

    let data = openai_stream(500);
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("decode", |b| {
        b.iter(|| {
            let mut dec = SseDecoder::new();
            let mut n = 0;
            for c in black_box(&data).chunks(1024) {
                dec.push(c).unwrap();
                while let Some(e) = dec.next_event() {
                    n += e.raw.len();
                }
            }
            n
        })
    });
    g.bench_function("openai_relay_strip_usage", |b| {
        b.iter(|| {
            let mut r = OpenAiStreamRelay::new(true, 0);
            let mut out = BytesMut::with_capacity(data.len());
            for c in black_box(&data).chunks(1024) {
                r.feed(c, &mut out).unwrap();
            }
            r.finish(StreamEnd::Clean, &mut out);
            out.len()
        })
    });
    g.finish();
}

fn requests(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_rewrite");
    for size in [1024usize, 100 * 1024] {
        let filler = "x".repeat(size - 120);
        let body = format!("{{\"model\":\"openai/gpt-4o\",\"messages\":[{{\"role\":\"user\",\"content\":\"{filler}\"}}],\"stream\":true}}");
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("{}KB", size / 1024), |b| {
            b.iter(|| {
                let mut obj = RawObject::parse(black_box(body.as_bytes())).unwrap();
                obj.set("model", "gpt-4o");
                obj.set(
                    "stream_options",
                    &serde_json::json!({"include_usage": true}),
                );
                obj.to_vec().len()
            })
        });
    }
    g.finish();

    let body = br#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hello there, a reasonably long answer follows here"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#;
    c.bench_function("usage_from_response_body", |b| {
        b.iter(|| usage::from_response_body(black_box(body)))
    });
}

criterion_group!(benches, streams, requests);
criterion_main!(benches);
