//! Relays an OpenAI-compatible SSE stream to the client, event by event.
//!
//! Events are forwarded with their exact bytes. The relay only intervenes where the gateway has a
//! promise to keep:
//! - usage is recorded from whichever chunk carries it;
//! - the usage-only chunk is removed when the gateway injected `stream_options.include_usage`
//!   on the client's behalf (the client did not ask for it, and strict clients choke on an
//!   empty `choices`);
//! - exactly one `data: [DONE]` reaches the client: duplicates and anything after it are dropped,
//!   and one is added when the upstream ended without it;
//! - a stream the upstream broke off ends with an OpenAI error event, then `[DONE]`, never a
//!   silent truncation.

use bytes::{Bytes, BytesMut};

use crate::openai::ErrorEnvelope;
use crate::sse::{self, EventTooLarge, SseDecoder, SseEvent};
use crate::usage::{self, StreamStats, Usage};

/// How the upstream stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The upstream finished its response normally.
    Clean,
    /// The upstream failed mid-stream (reset, timeout, protocol error).
    Failed { message: String, code: &'static str },
}

#[derive(Debug)]
pub struct OpenAiStreamRelay {
    decoder: SseDecoder,
    strip_usage_only: bool,
    done_sent: bool,
    usage: Option<Usage>,
    stats: StreamStats,
}

impl OpenAiStreamRelay {
    /// `strip_usage_only`: drop the usage-only chunk (set when the gateway injected
    /// `include_usage`). `max_event_bytes`: largest single event accepted (0 = unlimited).
    pub fn new(strip_usage_only: bool, max_event_bytes: usize) -> Self {
        Self {
            decoder: SseDecoder::with_limit(max_event_bytes),
            strip_usage_only,
            done_sent: false,
            usage: None,
            stats: StreamStats::default(),
        }
    }

    /// Feeds one upstream chunk; whatever should reach the client is appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), EventTooLarge> {
        self.decoder.push(chunk)?;
        if let Some(run) = self.decoder.take_complete() {
            self.relay_run(run, out);
        }
        Ok(())
    }

    /// [`feed`](Self::feed) with a chunk the caller gives away: the whole events in it are
    /// relayed without being copied into the decoder, and a read with nothing to change
    /// becomes the output itself when `out` is empty (no copy at all).
    pub fn feed_bytes(&mut self, chunk: Bytes, out: &mut BytesMut) -> Result<(), EventTooLarge> {
        for run in self.decoder.push_bytes(chunk)?.into_iter().flatten() {
            self.relay_run(run, out);
        }
        Ok(())
    }

    /// Relays a run of whole events.
    fn relay_run(&mut self, run: Bytes, out: &mut BytesMut) {
        if self.done_sent {
            return;
        }
        // Plain content chunks are forwarded in runs, their text counted in one pass; only the
        // events holding a mark (the end, a usage report, tool calls) are taken one by one. A
        // false alarm, such as `[DONE]` in generated text, costs only that event's parse.
        let mut marks = usage::Lookouts::new(&run);
        if marks.first_from(0).is_none() {
            self.stats.observe_text(&run);
            if out.is_empty() {
                // Takes the read's buffer over when nothing else holds it.
                *out = BytesMut::from(run);
            } else {
                out.extend_from_slice(&run);
            }
            return;
        }
        let mut at = 0;
        while at < run.len() && !self.done_sent {
            let Some(mark) = marks.first_from(at) else {
                self.stats.observe_text(&run[at..]);
                out.extend_from_slice(&run[at..]);
                break;
            };
            let (start, end) = sse::event_around(&run, at, mark);
            self.stats.observe_text(&run[at..start]);
            out.extend_from_slice(&run[at..start]);
            self.handle(sse::event_at(&run, start, end), out, false);
            at = end;
        }
    }

    /// Ends the stream, appending the closing bytes (error event and/or `[DONE]`) to `out`.
    pub fn finish(&mut self, end: StreamEnd, out: &mut BytesMut) {
        match &end {
            StreamEnd::Clean => {
                if let Some(tail) = self.decoder.finish() {
                    self.handle(tail, out, true);
                }
            }
            StreamEnd::Failed { message, code } => {
                // A partial trailing event is a fragment of a broken stream: drop it.
                while let Some(ev) = self.decoder.next_event() {
                    self.handle(ev, out, false);
                }
                if !self.done_sent {
                    let err = ErrorEnvelope::new(message.as_str(), "api_error", None, Some(code));
                    sse::encode_data(&err.to_bytes(), out);
                }
            }
        }
        if !self.done_sent {
            out.extend_from_slice(sse::DONE);
            self.done_sent = true;
        }
    }

    fn handle(&mut self, ev: SseEvent, out: &mut BytesMut, unterminated: bool) {
        if self.done_sent {
            return;
        }
        if unterminated && ev.data.is_none() {
            // A fragment with no data (a cut comment or garbage): relayed, it would run into
            // the `[DONE]` line that follows and hide it from the client.
            return;
        }
        if ev.is_done() || ev.data.as_deref().is_some_and(has_done_line) {
            self.done_sent = true;
            out.extend_from_slice(sse::DONE);
            return;
        }
        if let Some(data) = &ev.data {
            self.stats.observe_chunk(data);
            if let Some(cu) = usage::from_chunk(data) {
                self.usage = Some(cu.usage);
                if cu.usage_only && self.strip_usage_only {
                    return;
                }
            }
        }
        out.extend_from_slice(&ev.raw);
        if unterminated && ev.data.is_some() {
            out.extend_from_slice(b"\n\n");
        }
    }

    /// The last usage the stream reported.
    pub fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref()
    }

    /// Tool calls and text seen so far.
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }
}

/// A multi-line `data` whose lines include `[DONE]`: a corrupted stream (OpenAI never sends
/// multi-line data) that still says it ended. Forwarding it would put a second `data: [DONE]`
/// line before the relay's own.
fn has_done_line(data: &[u8]) -> bool {
    memchr::memchr(b'\n', data).is_some()
        && data
            .split(|b| *b == b'\n')
            .any(|l| l.trim_ascii() == b"[DONE]")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n";

    fn run(strip: bool, input: &str, end: StreamEnd) -> (String, OpenAiStreamRelay) {
        let mut r = OpenAiStreamRelay::new(strip, 0);
        let mut out = BytesMut::new();
        r.feed(input.as_bytes(), &mut out).unwrap();
        r.finish(end, &mut out);
        (String::from_utf8(out.to_vec()).unwrap(), r)
    }

    #[test]
    fn passes_through_byte_exact_and_keeps_usage_when_asked() {
        let input = format!("{CHUNK}{USAGE}data: [DONE]\n\n");
        let (out, r) = run(false, &input, StreamEnd::Clean);
        assert_eq!(out, input);
        assert_eq!(r.usage().unwrap().total_tokens, 7);
    }

    #[test]
    fn strips_injected_usage_chunk_but_records_it() {
        let input = format!("{CHUNK}{USAGE}data: [DONE]\n\n");
        let (out, r) = run(true, &input, StreamEnd::Clean);
        assert_eq!(out, format!("{CHUNK}data: [DONE]\n\n"));
        assert_eq!(r.usage().unwrap().prompt_tokens, 5);
    }

    #[test]
    fn exactly_one_done() {
        let input = format!("{CHUNK}data: [DONE]\n\ndata: [DONE]\n\n{CHUNK}");
        let (out, _) = run(false, &input, StreamEnd::Clean);
        assert_eq!(out, format!("{CHUNK}data: [DONE]\n\n"));
        let (out, _) = run(false, CHUNK, StreamEnd::Clean);
        assert_eq!(out, format!("{CHUNK}data: [DONE]\n\n"));
        let (out, _) = run(false, &format!("{CHUNK}data: [DONE]"), StreamEnd::Clean);
        assert_eq!(out, format!("{CHUNK}data: [DONE]\n\n"));
    }

    #[test]
    fn unterminated_fragment_without_data_does_not_swallow_done() {
        let (out, _) = run(false, &format!("{CHUNK}: partial comm"), StreamEnd::Clean);
        assert_eq!(out, format!("{CHUNK}data: [DONE]\n\n"));
    }

    #[test]
    fn done_line_inside_a_corrupted_event_ends_the_stream_once() {
        // A byte flipped in the blank line before `[DONE]` merges the two events.
        let input = format!("{CHUNK}data: {{\"id\":\"c\"}}\0\ndata: [DONE]\n\n");
        let (out, _) = run(false, &input, StreamEnd::Clean);
        assert_eq!(out.matches("[DONE]").count(), 1, "{out}");
        assert!(out.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn runs_and_single_events_relay_the_same_at_every_split_point() {
        const TOOL: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n";
        const REASONING: &str =
            "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"a\\\"b\"}}]}\r\n\r\n";
        let input = format!(
            "{CHUNK}: keep-alive\n\n{REASONING}{TOOL}{CHUNK}{USAGE}data: [DONE]\n\n{CHUNK}"
        );
        let (whole, r) = run(true, &input, StreamEnd::Clean);
        assert_eq!(
            whole,
            format!("{CHUNK}: keep-alive\n\n{REASONING}{TOOL}{CHUNK}data: [DONE]\n\n")
        );
        let stats = r.stats().clone();
        assert_eq!(stats.tool_calls, ["get_weather"]);
        // "hi" twice, `a"b` once (an escape counts as one byte).
        assert_eq!(stats.text_bytes, 7);
        for_every_split(true, &input, |split, out, r| {
            assert_eq!(out, whole, "split {split}");
            assert_eq!(r.stats(), &stats, "split {split}");
            assert_eq!(r.usage().unwrap().total_tokens, 7);
        });
    }

    /// Relays `input` fed in two reads split at every byte, borrowed (`feed`) and given away
    /// (`feed_bytes`), and checks each relay.
    fn for_every_split(
        strip_usage_only: bool,
        input: &str,
        check: impl Fn(usize, &str, &OpenAiStreamRelay),
    ) {
        let input = Bytes::copy_from_slice(input.as_bytes());
        for split in 0..=input.len() {
            for owned in [false, true] {
                let mut r = OpenAiStreamRelay::new(strip_usage_only, 0);
                let mut out = BytesMut::new();
                for part in [input.slice(..split), input.slice(split..)] {
                    if owned {
                        r.feed_bytes(part, &mut out).unwrap();
                    } else {
                        r.feed(&part, &mut out).unwrap();
                    }
                }
                r.finish(StreamEnd::Clean, &mut out);
                check(split, std::str::from_utf8(&out).unwrap(), &r);
            }
        }
    }

    #[test]
    fn a_read_with_nothing_to_change_becomes_the_output() {
        let mut r = OpenAiStreamRelay::new(false, 0);
        let chunk = Bytes::from(format!("{CHUNK}{CHUNK}"));
        let at = chunk.as_ptr();
        let mut out = BytesMut::new();
        r.feed_bytes(chunk, &mut out).unwrap();
        assert_eq!(out.as_ptr(), at, "the read's buffer, not a copy");
        assert_eq!(out, format!("{CHUNK}{CHUNK}").as_bytes());
        assert_eq!(r.stats().text_bytes, 4);
        // With output already waiting, the next read is appended after it.
        let chunk = Bytes::from(format!("{CHUNK}{USAGE}data: [DONE]\n\n"));
        r.feed_bytes(chunk, &mut out).unwrap();
        assert_eq!(
            out,
            format!("{CHUNK}{CHUNK}{CHUNK}{USAGE}data: [DONE]\n\n").as_bytes()
        );
    }

    #[test]
    fn text_in_a_marked_event_is_counted_once() {
        // Content beside tool calls, and content beside a usage report, in the same events:
        // the one-pass scan must not count them both as plain text and in the event's handling.
        const BOTH: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"xyz\",\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"f2\",\"arguments\":\"\"}}]}}]}\n\n";
        const LAST: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"abcd\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n";
        let input = format!("{CHUNK}{BOTH}{CHUNK}{LAST}data: [DONE]\n\n");
        for_every_split(false, &input, |split, out, r| {
            assert_eq!(out, input, "split {split}");
            // "hi" twice, "xyz", "abcd".
            assert_eq!(r.stats().text_bytes, 11, "split {split}");
            assert_eq!(r.stats().tool_calls, ["f2"], "split {split}");
            assert_eq!(r.usage().unwrap().total_tokens, 3, "split {split}");
        });
    }

    #[test]
    fn failure_ends_with_error_event_then_done() {
        let input = format!("{CHUNK}data: {{\"id\":\"trunc");
        let end = StreamEnd::Failed {
            message: "upstream closed".into(),
            code: "upstream_stream_error",
        };
        let (out, _) = run(false, &input, end);
        assert_eq!(
            out,
            format!("{CHUNK}data: {{\"error\":{{\"message\":\"upstream closed\",\"type\":\"api_error\",\"param\":null,\"code\":\"upstream_stream_error\"}}}}\n\ndata: [DONE]\n\n")
        );
    }
}
