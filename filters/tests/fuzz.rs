//! Property tests: the stream translators (and the OpenAI relay) never panic, whatever bytes an
//! upstream sends and however they are chunked, and always end with exactly one `[DONE]`.

use bytes::BytesMut;
use filters::dialects::{self, Dialect};
use filters::stream_relay::StreamEnd;
use proptest::prelude::*;

const ALL: [Dialect; 4] = [
    Dialect::Openai,
    Dialect::Anthropic,
    Dialect::Google,
    Dialect::Cohere,
];

fn fixture(d: Dialect) -> Vec<u8> {
    let name = match d {
        Dialect::Anthropic => "anthropic/tool_use.stream.sse",
        Dialect::Google => "google/function_call.stream.sse",
        Dialect::Cohere => "cohere/tool_call.stream.sse",
        Dialect::Openai => "anthropic/tool_use.stream.openai.sse",
    };
    std::fs::read(format!(
        "{}/tests/golden/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// `[DONE]` as a client sees it: lines that are exactly `data: [DONE]` (a line such as
/// `\0data: [DONE]`, relayed byte-for-byte from a corrupted upstream, is an unknown field to an
/// SSE parser and not a data line to a line-based one).
fn done_lines(out: &str) -> usize {
    // SSE lines end with `\n`, `\r\n` or a lone `\r`.
    out.split(['\n', '\r'])
        .filter(|l| *l == "data: [DONE]")
        .count()
}

fn run(d: Dialect, data: &[u8], cuts: &[usize], clean: bool) -> String {
    let mut t = dialects::stream_translator(d, "m", 1, true, 4096);
    let mut out = BytesMut::new();
    let mut start = 0;
    let mut ok = true;
    for &c in cuts.iter().chain(std::iter::once(&data.len())) {
        let c = c.min(data.len()).max(start);
        if t.feed(&data[start..c], &mut out).is_err() {
            ok = false;
            break;
        }
        start = c;
    }
    let end = if clean && ok {
        StreamEnd::Clean
    } else {
        StreamEnd::Failed {
            message: "x".into(),
            code: "upstream_error",
        }
    };
    t.finish(end, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048),
                                   mut cuts in proptest::collection::vec(0usize..2048, 0..8),
                                   clean in any::<bool>()) {
        cuts.sort_unstable();
        for d in ALL {
            let out = run(d, &data, &cuts, clean);
            prop_assert_eq!(done_lines(&out), 1);
            prop_assert!(out.ends_with("data: [DONE]\n\n"));
        }
    }

    #[test]
    fn mutated_streams_never_panic(seed_flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..16),
                                   mut cuts in proptest::collection::vec(0usize..4096, 0..8),
                                   truncate in any::<usize>()) {
        cuts.sort_unstable();
        for d in ALL {
            let mut data = fixture(d);
            for (pos, byte) in &seed_flips {
                let i = pos % data.len();
                data[i] = *byte;
            }
            data.truncate(truncate % (data.len() + 1));
            let out = run(d, &data, &cuts, true);
            prop_assert_eq!(done_lines(&out), 1);
            prop_assert!(out.ends_with("data: [DONE]\n\n"));
        }
    }
}
