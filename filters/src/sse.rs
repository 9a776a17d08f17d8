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

    /// Appends a chunk the caller owns and returns the complete events buffered, as up to two
    /// runs of raw bytes in stream order (see [`take_complete`](Self::take_complete)). Unlike
    /// [`push`](Self::push), the events that lie wholly inside `chunk` are handed out as a slice
    /// of it, not copied: only an event split across reads and the unfinished tail are copied
    /// into the decoder. A relay that reads its upstream in large reads (a burst of events)
    /// forwards them without a copy.
    pub fn push_bytes(&mut self, chunk: Bytes) -> Result<[Option<Bytes>; 2], EventTooLarge> {
        let mut runs = [None, None];
        let mut rest = chunk;
        if !self.buf.is_empty() {
            // Finish the pending event from the head of the chunk. Everything up to the chunk's
            // first `\n` is copied first, so that the pending bytes end where a line ends and no
            // `\r` in them is left ambiguous (a `\r` at the end of the buffer may be the first
            // half of a `\r\n` split across reads).
            let first_line = memchr::memchr(b'\n', &rest).map_or(rest.len(), |t| t + 1);
            if first_line == rest.len() {
                self.push(&rest)?;
                runs[0] = self.take_complete();
                return Ok(runs);
            }
            self.buf.extend_from_slice(&rest[..first_line]);
            let mut last_end = None;
            let mut from = self.scanned;
            while let Some(end) = find_event_end(&self.buf, from, false) {
                last_end = Some(end);
                from = end;
            }
            let head_end = match last_end {
                // The pending event ended with the line just completed.
                Some(end) if end == self.buf.len() => first_line,
                // Complete events were left in the buffer (`push` without taking them) and
                // another one started: the plain path.
                Some(_) => {
                    self.buf.extend_from_slice(&rest[first_line..]);
                    runs[0] = self.take_complete();
                    return Ok(runs);
                }
                None => match find_event_end(&rest, first_line, false) {
                    Some(end) => {
                        self.buf.extend_from_slice(&rest[first_line..end]);
                        end
                    }
                    None => {
                        // The whole chunk belongs to the pending event.
                        self.buf.extend_from_slice(&rest[first_line..]);
                        self.check_limit()?;
                        self.scanned = last_line_start(&self.buf, self.scanned);
                        return Ok(runs);
                    }
                },
            };
            self.scanned = 0;
            runs[0] = Some(self.buf.split().freeze());
            rest = rest.slice(head_end..);
        }
        // The decoder is empty: `rest` starts where an event starts.
        match last_event_end(&rest) {
            Some(end) => {
                self.buf.extend_from_slice(&rest[end..]);
                rest.truncate(end);
                runs[usize::from(runs[0].is_some())] = Some(rest);
            }
            None => {
                self.buf.extend_from_slice(&rest);
                // Oversized only when nothing complete came with it (as in `push`); otherwise
                // the next read finds it.
                if runs[0].is_none() {
                    self.check_limit()?;
                }
            }
        }
        self.scanned = last_line_start(&self.buf, 0);
        Ok(runs)
    }

    /// Whether the buffer (holding no complete event) is past the limit.
    fn check_limit(&self) -> Result<(), EventTooLarge> {
        if self.max_event_bytes != 0 && self.buf.len() > self.max_event_bytes {
            return Err(EventTooLarge);
        }
        Ok(())
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

/// In a run of whole events (from [`SseDecoder::take_complete`] or
/// [`SseDecoder::push_bytes`]), the bounds of the event holding offset `inside`; `from` is the
/// start of an event at or before it.
pub fn event_around(run: &[u8], from: usize, inside: usize) -> (usize, usize) {
    // The last event end before `inside`, found backwards: a mark far into a long run costs
    // the lines around it, not a walk over every event before it. (A lone `\r` right before
    // `inside` is left ambiguous there and the event before it is returned instead; the caller
    // moves on to `inside` and asks again.)
    let start = last_event_end(&run[from..inside]).map_or(from, |e| from + e);
    // `eof`: the run ends at an event's end, so a final lone `\r` is complete.
    let end = find_event_end(run, start, true).unwrap_or(run.len());
    (start, end)
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

/// End (exclusive) of the last complete event in `buf`, which starts at a line start; found
/// backwards from the end, so a run of many events costs a look at its last few lines only.
fn last_event_end(buf: &[u8]) -> Option<usize> {
    let mut limit = buf.len();
    if buf.last() == Some(&b'\r') {
        // Ambiguous: a `\n` may follow in the next read.
        limit -= 1;
    }
    loop {
        let t = memchr::memrchr2(b'\n', b'\r', &buf[..limit])?;
        // Where this line's terminator starts (`\r\n` is one terminator).
        let start = if buf[t] == b'\n' && t > 0 && buf[t - 1] == b'\r' {
            t - 1
        } else {
            t
        };
        // An empty line (its terminator starts the line) ends an event.
        if start == 0 || matches!(buf[start - 1], b'\n' | b'\r') {
            return Some(t + 1);
        }
        limit = start;
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
            let mut runs = vec![];
            for part in [a, b] {
                d.push(part).unwrap();
                runs.extend(d.take_complete());
            }
            assert_eq!(events_of_runs(&runs), expected, "split at {split}");
            assert!(d.finish().is_none());
        }
    }

    /// The events in runs of whole events (from `take_complete` or `push_bytes`).
    fn events_of_runs(runs: &[Bytes]) -> Vec<SseEvent> {
        let mut got = vec![];
        for run in runs {
            let mut at = 0;
            while at < run.len() {
                let (start, end) = event_around(run, at, at);
                assert_eq!(start, at);
                got.push(event_at(run, start, end));
                at = end;
            }
        }
        got
    }

    #[test]
    fn owned_chunks_give_the_same_events_at_every_pair_of_split_points() {
        // Every line ending, a lone `\r` before a `\n`-ended line, a `\r\r` event end, split
        // UTF-8, a comment.
        let input = "data: {\"a\":\"h\u{e9}llo\"}\r\n\r\n: keepalive\n\nevent: x\ndata: 1\rdata: 2\r\rdata: 3\r\ndata: 4\n\ndata: [DONE]\n\n";
        let mut whole = SseDecoder::new();
        whole.push(input.as_bytes()).unwrap();
        let expected = all(&mut whole);
        assert_eq!(expected.len(), 5);
        let bytes = Bytes::from(input);
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let mut d = SseDecoder::new();
                let mut runs = vec![];
                for part in [bytes.slice(..i), bytes.slice(i..j), bytes.slice(j..)] {
                    runs.extend(d.push_bytes(part).unwrap().into_iter().flatten());
                }
                runs.extend(d.finish().map(|e| e.raw));
                let joined: Vec<u8> = runs.iter().flat_map(|r| r.to_vec()).collect();
                assert_eq!(joined, input.as_bytes(), "splits at {i}, {j}");
                assert_eq!(events_of_runs(&runs), expected, "splits at {i}, {j}");
            }
        }
    }

    #[test]
    fn owned_chunks_of_whole_events_are_not_copied() {
        let mut d = SseDecoder::new();
        let chunk = Bytes::from_static(b"data: 1\n\ndata: 2\n\n");
        let [run, none] = d.push_bytes(chunk.clone()).unwrap();
        assert_eq!(run.as_ref().unwrap().as_ptr(), chunk.as_ptr());
        assert_eq!(run.unwrap().len(), chunk.len());
        assert!(none.is_none());
        // A read that ends inside an event: the whole events before it are a slice of it.
        let chunk = Bytes::from_static(b"data: 3\n\ndata: 4\n\ndata: 5");
        let [run, _] = d.push_bytes(chunk.clone()).unwrap();
        assert_eq!(run.unwrap(), chunk.slice(..18));
        // The next read completes that event (copied) and brings two more (not copied).
        let chunk = Bytes::from_static(b"6\n\ndata: 7\n\ndata: 8\n\n");
        let [head, run] = d.push_bytes(chunk.clone()).unwrap();
        assert_eq!(head.unwrap(), &b"data: 56\n\n"[..]);
        let run = run.unwrap();
        assert_eq!(run.as_ptr(), chunk[3..].as_ptr());
        assert_eq!(run, &b"data: 7\n\ndata: 8\n\n"[..]);
        assert!(d.finish().is_none());
    }

    #[test]
    fn owned_chunks_respect_the_event_limit() {
        let mut d = SseDecoder::with_limit(16);
        assert!(d
            .push_bytes(Bytes::from_static(b"data: 0123456789abcdef"))
            .is_err());
        // Complete events are handed out first; the oversized tail is refused on the next read.
        let mut d = SseDecoder::with_limit(16);
        let [run, _] = d
            .push_bytes(Bytes::from_static(b"data: ok\n\ndata: 0123456789abcdef"))
            .unwrap();
        assert_eq!(run.unwrap(), &b"data: ok\n\n"[..]);
        assert!(d.push_bytes(Bytes::from_static(b"more")).is_err());
        // Pending bytes plus a read still inside the same event.
        let mut d = SseDecoder::with_limit(16);
        d.push_bytes(Bytes::from_static(b"data: 0123")).unwrap();
        assert!(d
            .push_bytes(Bytes::from_static(b"4567\ndata: 89abcdef"))
            .is_err());
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
