//! Incremental Server-Sent Events decoder and encoder.
//!
//! Upstreams write SSE in arbitrary TCP chunks: an event, a line, or a multi-byte UTF-8 character
//! may be split anywhere. [`SseDecoder`] buffers bytes until a whole event (terminated by a blank
//! line) is present and hands it out with its exact raw bytes, so a relay can forward events
//! byte-for-byte and only look inside the ones it cares about. Decoding works on bytes, never on
//! partial strings, so split UTF-8 sequences are reassembled before anyone reads them.
//!
//! Line terminators follow the WHATWG spec: `\n`, `\r\n` or a lone `\r`.

use bytes::{Bytes, BytesMut};

/// One complete SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event exactly as received, including its terminating blank line.
    pub raw: Bytes,
    /// The `event:` field, if any.
    pub event: Option<Bytes>,
    /// The `data:` lines joined with `\n`; `None` when the event had no data line (a comment or
    /// keep-alive).
    pub data: Option<Bytes>,
}

impl SseEvent {
    /// True for OpenAI's end-of-stream sentinel `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.data.as_deref().map(trim_ascii) == Some(b"[DONE]".as_slice())
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end]
}

/// Incremental SSE decoder. Feed it chunks with [`push`](Self::push), take events with
/// [`next_event`](Self::next_event), and call [`finish`](Self::finish) at end of stream.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: BytesMut,
    /// Offset in `buf` of the first line not yet scanned; lines before it belong to the current,
    /// unfinished event.
    scanned: usize,
    /// Largest number of bytes an unfinished event may hold; 0 means unlimited.
    max_event_bytes: usize,
}

/// Returned when one event grows past the configured limit (a broken or hostile upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTooLarge;

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that refuses events larger than `max_event_bytes`.
    pub fn with_limit(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            ..Self::default()
        }
    }

    /// Append a chunk of the stream.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), EventTooLarge> {
        self.buf.extend_from_slice(chunk);
        if self.max_event_bytes != 0 && self.buf.len() > self.max_event_bytes {
            // Only an error if no complete event is waiting to be taken out first.
            if find_event_end(&self.buf, self.scanned, false).is_none() {
                return Err(EventTooLarge);
            }
        }
        Ok(())
    }

    /// The next complete event, if one is buffered.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        match find_event_end(&self.buf, self.scanned, false) {
            Some(end) => {
                self.scanned = 0;
                let raw = self.buf.split_to(end).freeze();
                Some(parse_event(raw))
            }
            None => {
                // Remember how far we got so the next search does not rescan whole lines.
                self.scanned = last_line_start(&self.buf, self.scanned);
                None
            }
        }
    }

    /// Every complete event buffered, as one run of raw bytes (a relay that forwards events
    /// untouched looks at a whole read at once instead of event by event); split it with
    /// [`events`] when the events themselves matter.
    pub fn take_complete(&mut self) -> Option<Bytes> {
        let mut end = 0;
        let mut from = self.scanned;
        while let Some(e) = find_event_end(&self.buf, from, false) {
            end = e;
            from = e;
        }
        if end == 0 {
            self.scanned = last_line_start(&self.buf, self.scanned);
            return None;
        }
        let run = self.buf.split_to(end).freeze();
        self.scanned = last_line_start(&self.buf, 0);
        Some(run)
    }

    /// End of stream: returns the trailing event that was not terminated by a blank line, if it
    /// has any content. Per the SSE spec such an event would be discarded, but LLM upstreams often
    /// omit the final blank line after `data: [DONE]`, so we hand it out and let the caller decide.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if let Some(ev) = self.next_event() {
            return Some(ev);
        }
        self.scanned = 0;
        if self.buf.is_empty() {
            return None;
        }
        let raw = self.buf.split().freeze();
        if trim_ascii(&raw).is_empty() {
            return None;
        }
        Some(parse_event(raw))
    }
}

/// In a run from [`SseDecoder::take_complete`] (which ends where an event ends), the bounds of
/// the event holding offset `inside`, walking events from `from` (an event's start).
pub fn event_around(run: &[u8], from: usize, inside: usize) -> (usize, usize) {
    let mut start = from;
    // `eof`: the run ends at an event's end, so a final lone `\r` is complete.
    while let Some(end) = find_event_end(run, start, true) {
        if end > inside {
            return (start, end);
        }
        start = end;
    }
    (start, run.len())
}

/// The event at `start..end` of a run.
pub fn event_at(run: &Bytes, start: usize, end: usize) -> SseEvent {
    parse_event(run.slice(start..end))
}

/// Finds the end (exclusive) of the first complete event in `buf`, scanning lines from `from`.
/// A lone `\r` at the very end of the buffer is ambiguous (a `\n` may follow), so it is treated
/// as incomplete unless `eof`.
fn find_event_end(buf: &[u8], from: usize, eof: bool) -> Option<usize> {
    let mut line_start = from;
    loop {
        let rel = memchr::memchr2(b'\n', b'\r', &buf[line_start..])?;
        let term = line_start + rel;
        let next = if buf[term] == b'\r' {
            if term + 1 == buf.len() {
                if !eof {
                    return None;
                }
                term + 1
            } else if buf[term + 1] == b'\n' {
                term + 2
            } else {
                term + 1
            }
        } else {
            term + 1
        };
        if term == line_start {
            // An empty line: the event ends after its terminator. A blank line with nothing
            // before it (stray separator) is returned as an empty event and skipped by callers.
            return Some(next);
        }
        line_start = next;
    }
}

/// Start of the last (incomplete) line, so a later scan can resume there.
fn last_line_start(buf: &[u8], from: usize) -> usize {
    let mut pos = from;
    while let Some(rel) = memchr::memchr2(b'\n', b'\r', &buf[pos..]) {
        let term = pos + rel;
        if buf[term] == b'\r' && term + 1 == buf.len() {
            // keep the ambiguous `\r` line unscanned
            return pos;
        }
        pos = if buf[term] == b'\r' && buf.get(term + 1) == Some(&b'\n') {
            term + 2
        } else {
            term + 1
        };
    }
    pos
}

fn parse_event(raw: Bytes) -> SseEvent {
    let mut event = None;
    let mut data: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut pos = 0;
    while pos < raw.len() {
        let (line_end, next) = match memchr::memchr2(b'\n', b'\r', &raw[pos..]) {
            Some(rel) => {
                let t = pos + rel;
                let n = if raw[t] == b'\r' && raw.get(t + 1) == Some(&b'\n') {
                    t + 2
                } else {
                    t + 1
                };
                (t, n)
            }
            None => (raw.len(), raw.len()),
        };
        let line = &raw[pos..line_end];
        if !line.is_empty() && line[0] != b':' {
            let (name, value_start) = match memchr::memchr(b':', line) {
                Some(c) => {
                    let mut v = c + 1;
                    if line.get(v) == Some(&b' ') {
                        v += 1;
                    }
                    (&line[..c], pos + v)
                }
                None => (line, line_end),
            };
            match name {
                b"data" => {
                    let value = raw.slice(value_start..line_end);
                    match (&mut joined, &data) {
                        (Some(j), _) => {
                            j.extend_from_slice(b"\n");
                            j.extend_from_slice(&value);
                        }
                        (None, Some(first)) => {
                            let mut j = BytesMut::with_capacity(first.len() + value.len() + 1);
                            j.extend_from_slice(first);
                            j.extend_from_slice(b"\n");
                            j.extend_from_slice(&value);
                            joined = Some(j);
                        }
                        (None, None) => data = Some(value),
                    }
                }
                b"event" => event = Some(raw.slice(value_start..line_end)),
                _ => {} // id, retry and unknown fields carry nothing we use
            }
        }
        pos = next;
    }
    if let Some(j) = joined {
        data = Some(j.freeze());
    }
    SseEvent { raw, event, data }
}

/// `data: <payload>\n\n`
pub fn encode_data(payload: &[u8], out: &mut BytesMut) {
    out.reserve(payload.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\n\n");
}

/// `event: <name>\ndata: <payload>\n\n`
pub fn encode_named(event: &str, payload: &[u8], out: &mut BytesMut) {
    out.reserve(event.len() + payload.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\n");
    encode_data(payload, out);
}

/// OpenAI's end-of-stream sentinel, as sent to clients.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn all(dec: &mut SseDecoder) -> Vec<SseEvent> {
        std::iter::from_fn(|| dec.next_event()).collect()
    }

    #[test]
    fn decodes_events_with_every_line_ending() {
        for sep in ["\n", "\r\n", "\r"] {
            let input = format!("event: a{sep}data: 1{sep}{sep}data: x{sep}data: y{sep}{sep}");
            let mut d = SseDecoder::new();
            d.push(input.as_bytes()).unwrap();
            let evs = all(&mut d);
            // A lone `\r` at the very end stays pending until more bytes or finish().
            let evs = if sep == "\r" {
                let mut e = evs;
                e.extend(d.finish());
                e
            } else {
                evs
            };
            assert_eq!(evs.len(), 2, "sep {sep:?}");
            assert_eq!(evs[0].event.as_deref(), Some(b"a".as_slice()));
            assert_eq!(evs[0].data.as_deref(), Some(b"1".as_slice()));
            assert_eq!(evs[1].data.as_deref(), Some(b"x\ny".as_slice()));
            let raw: Vec<u8> = evs.iter().flat_map(|e| e.raw.to_vec()).collect();
            assert_eq!(raw, input.as_bytes());
        }
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let input = "data: {\"a\":\"h\u{e9}llo \u{1f600}\"}\r\n\r\n: keepalive\n\ndata: [DONE]\n\n";
        let mut whole = SseDecoder::new();
        whole.push(input.as_bytes()).unwrap();
        let expected = all(&mut whole);
        assert_eq!(expected.len(), 3);
        for split in 0..=input.len() {
            let mut d = SseDecoder::new();
            let (a, b) = input.as_bytes().split_at(split);
            d.push(a).unwrap();
            let mut got = all(&mut d);
            d.push(b).unwrap();
            got.extend(all(&mut d));
            assert_eq!(got, expected, "split at {split}");
        }
    }

    #[test]
    fn complete_runs_split_into_the_same_events_at_every_split_point() {
        let input = "data: {\"a\":\"h\u{e9}llo\"}\r\n\r\n: keepalive\n\nevent: x\ndata: 1\ndata: 2\r\rdata: [DONE]\n\n";
        let mut whole = SseDecoder::new();
        whole.push(input.as_bytes()).unwrap();
        let expected = all(&mut whole);
        assert_eq!(expected.len(), 4);
        for split in 0..=input.len() {
            let mut d = SseDecoder::new();
            let (a, b) = input.as_bytes().split_at(split);
            let mut got = vec![];
            for part in [a, b] {
                d.push(part).unwrap();
                if let Some(run) = d.take_complete() {
                    let mut at = 0;
                    while at < run.len() {
                        let (start, end) = event_around(&run, at, at);
                        assert_eq!(start, at);
                        got.push(event_at(&run, start, end));
                        at = end;
                    }
                }
            }
            assert_eq!(got, expected, "split at {split}");
            assert!(d.finish().is_none());
        }
    }

    #[test]
    fn byte_by_byte_feed() {
        let input = b"data: one\n\ndata: two\n\n";
        let mut d = SseDecoder::new();
        let mut got = vec![];
        for b in input {
            d.push(&[*b]).unwrap();
            got.extend(all(&mut d));
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].data.as_deref(), Some(b"two".as_slice()));
    }

    #[test]
    fn comments_have_no_data_and_done_is_detected() {
        let mut d = SseDecoder::new();
        d.push(b": ping\n\ndata:[DONE]\n\n").unwrap();
        let evs = all(&mut d);
        assert_eq!(evs[0].data, None);
        assert!(evs[1].is_done());
    }

    #[test]
    fn finish_returns_unterminated_tail() {
        let mut d = SseDecoder::new();
        d.push(b"data: [DONE]").unwrap();
        assert!(d.next_event().is_none());
        let ev = d.finish().unwrap();
        assert!(ev.is_done());
        assert!(d.finish().is_none());
    }

    #[test]
    fn limit_rejects_oversized_event() {
        let mut d = SseDecoder::with_limit(16);
        assert!(d.push(b"data: 0123456789abcdef").is_err());
        let mut d = SseDecoder::with_limit(16);
        d.push(b"data: ok\n\n").unwrap();
        assert!(d.next_event().is_some());
    }

    #[test]
    fn encoders() {
        let mut out = BytesMut::new();
        encode_named("error", b"{}", &mut out);
        encode_data(b"[DONE]", &mut out);
        assert_eq!(&out[..], b"event: error\ndata: {}\n\ndata: [DONE]\n\n");
    }
}
