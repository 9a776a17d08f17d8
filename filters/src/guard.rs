//! Guardrails' pure parts: the texts of a canonical request, PII redaction, and the output
//! check of a stream with a look-ahead window (text held back until no pattern can still match
//! across the next chunk).

use regex::{Regex, RegexSet};
use serde_json::Value;

use crate::sse::{self, SseDecoder};

/// Calls `f` on every text a model will read in a canonical request: `messages[].content`
/// (a string, or its `text` parts), `prompt` and `input` (strings or arrays of strings).
pub fn for_each_text(body: &mut serde_json::Map<String, Value>, mut f: impl FnMut(&mut String)) {
    fn walk(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
        match v {
            Value::String(s) => f(s),
            Value::Array(items) => {
                for i in items {
                    match i {
                        Value::String(s) => f(s),
                        Value::Object(part) => {
                            if let Some(Value::String(t)) = part.get_mut("text") {
                                f(t);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(Value::Array(messages)) = body.get_mut("messages") {
        for m in messages {
            if let Some(c) = m.get_mut("content") {
                walk(c, &mut f);
            }
        }
    }
    for k in ["prompt", "input"] {
        if let Some(v) = body.get_mut(k) {
            walk(v, &mut f);
        }
    }
}

/// Finds personal data and secrets in text and replaces them by `[REDACTED_<KIND>]`.
pub struct Redactor {
    email: Regex,
    card: Regex,
    iban: Regex,
    secret: Regex,
    phone: Regex,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::new()
    }
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut n = u32::from(*d);
        if i % 2 == 1 {
            n *= 2;
            if n > 9 {
                n -= 9;
            }
        }
        sum += n;
    }
    sum.is_multiple_of(10)
}

/// ISO 13616 check: move the first four characters to the end, letters as 10..35, mod 97 = 1.
fn iban_valid(s: &str) -> bool {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if s.len() < 15 || s.len() > 34 {
        return false;
    }
    let (head, tail) = s.split_at(4);
    let mut rem = 0u32;
    for c in tail.chars().chain(head.chars()) {
        let v = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

impl Redactor {
    pub fn new() -> Redactor {
        let re = |p: &str| Regex::new(p).expect("a valid built-in pattern");
        Redactor {
            email: re(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}\b"),
            // 13 to 19 digits, spaces or dashes between groups; Luhn decides.
            card: re(r"\b(?:\d[ -]?){12,18}\d\b"),
            iban: re(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
            // Strings shaped like API keys and tokens: well-known prefixes, and JWTs.
            secret: re(concat!(
                r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}|igw-[0-9a-f]{16,}|gsk_[A-Za-z0-9]{20,}",
                r"|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|xox[abpr]-[A-Za-z0-9-]{10,}",
                r"|AIza[0-9A-Za-z_-]{35}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"
            )),
            // International numbers (+CC ...), and North American ones ((555) 123-4567,
            // 555-123-4567); not dates or other grouped numbers.
            phone: re(concat!(
                r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){2,5}\b",
                r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}\b|\b\d{3}[.-]\d{3}[.-]\d{4}\b"
            )),
        }
    }

    /// The text with what it found replaced; `None` when nothing was found.
    pub fn redact(&self, text: &str) -> Option<String> {
        let mut out = text.to_string();
        let mut changed = false;
        let mut apply = |re: &Regex, label: &str, check: &dyn Fn(&str) -> bool| {
            let replaced = re.replace_all(&out, |c: &regex::Captures<'_>| {
                if check(&c[0]) {
                    label.to_string()
                } else {
                    c[0].to_string()
                }
            });
            if replaced != out {
                changed = true;
                out = replaced.into_owned();
            }
        };
        apply(&self.secret, "[REDACTED_SECRET]", &|_| true);
        apply(&self.email, "[REDACTED_EMAIL]", &|_| true);
        apply(&self.iban, "[REDACTED_IBAN]", &iban_valid);
        apply(&self.card, "[REDACTED_CARD]", &|s| {
            let d: Vec<u8> = s
                .bytes()
                .filter(u8::is_ascii_digit)
                .map(|b| b - b'0')
                .collect();
            (13..=19).contains(&d.len()) && luhn(&d)
        });
        apply(&self.phone, "[REDACTED_PHONE]", &|s| {
            let n = s.bytes().filter(u8::is_ascii_digit).count();
            (8..=15).contains(&n)
        });
        changed.then_some(out)
    }
}

/// What the output check of a stream decided for one piece of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep going.
    Pass,
    /// A pattern matched: the answer was ended with `finish_reason: "content_filter"` and
    /// `[DONE]`; send nothing more.
    Blocked,
}

/// The output check of a canonical (OpenAI chat-completion) stream: the text of choice 0 is
/// released only once `window` more characters have arrived after it (or the stream ends), so
/// a match split across chunks is caught before any of it is sent. Other events pass.
pub struct StreamGuard {
    patterns: RegexSet,
    window: usize,
    decoder: SseDecoder,
    /// The last `window` characters released (a match may start in them), then the text
    /// received and not yet released (from `held_from`): one buffer, searched as it is.
    text: String,
    held_from: usize,
    /// The stream's chunk fields other than `choices` and `usage` (`id`, `model`, ...) as the
    /// start of the chunks written here: `{...,"choices":`. Taken from the first chunk.
    head: Option<Vec<u8>>,
    blocked: bool,
}

impl StreamGuard {
    pub fn new(patterns: RegexSet, window: usize) -> StreamGuard {
        StreamGuard {
            patterns,
            window: window.max(1),
            decoder: SseDecoder::new(),
            text: String::new(),
            held_from: 0,
            head: None,
            blocked: false,
        }
    }

    fn matches(&self) -> bool {
        self.patterns.is_match(&self.text)
    }

    fn set_head(&mut self, chunk: &serde_json::Map<String, Value>) {
        if self.head.is_some() {
            return;
        }
        let mut h = chunk.clone();
        h.remove("choices");
        h.remove("usage");
        let mut bytes = serde_json::to_vec(&h).unwrap_or_else(|_| b"{}".to_vec());
        bytes.pop();
        if bytes.len() > 1 {
            bytes.push(b',');
        }
        bytes.extend_from_slice(b"\"choices\":");
        self.head = Some(bytes);
    }

    fn chunk_with(&self, delta: Value, finish: Value) -> Vec<u8> {
        let mut c = self
            .head
            .clone()
            .unwrap_or_else(|| b"{\"object\":\"chat.completion.chunk\",\"choices\":".to_vec());
        let choices = serde_json::json!([{"index": 0, "delta": delta, "finish_reason": finish}]);
        let _ = serde_json::to_writer(&mut c, &choices);
        c.push(b'}');
        c
    }

    /// Releases held text down to the window (`all`: everything).
    fn release(&mut self, all: bool, out: &mut bytes::BytesMut) {
        let keep = if all { 0 } else { self.window };
        let held = &self.text[self.held_from..];
        let chars = held.chars().count();
        if chars <= keep {
            return;
        }
        let cut = self.held_from
            + held
                .char_indices()
                .nth(chars - keep)
                .map_or(held.len(), |(i, _)| i);
        let released = self.text[self.held_from..cut].to_string();
        self.held_from = cut;
        // What was released before the window is no longer needed.
        let tail_chars = self.text[..self.held_from].chars().count();
        if tail_chars > self.window {
            let at = self
                .text
                .char_indices()
                .nth(tail_chars - self.window)
                .map_or(self.held_from, |(i, _)| i);
            self.text.drain(..at);
            self.held_from -= at;
        }
        let chunk = self.chunk_with(serde_json::json!({"content": released}), Value::Null);
        sse::encode_data(&chunk, out);
    }

    fn block(&mut self, out: &mut bytes::BytesMut) -> Verdict {
        self.blocked = true;
        self.text.clear();
        self.held_from = 0;
        let chunk = self.chunk_with(
            serde_json::json!({}),
            Value::String("content_filter".into()),
        );
        sse::encode_data(&chunk, out);
        out.extend_from_slice(sse::DONE);
        Verdict::Blocked
    }

    /// Feeds canonical SSE bytes; writes what may be sent to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut bytes::BytesMut) -> Verdict {
        if self.blocked {
            return Verdict::Blocked;
        }
        if self.decoder.push(input).is_err() {
            return self.block(out);
        }
        while let Some(ev) = self.decoder.next_event() {
            if ev.is_done() {
                if self.matches() {
                    return self.block(out);
                }
                self.release(true, out);
                out.extend_from_slice(&ev.raw);
                continue;
            }
            let parsed = ev
                .data
                .as_deref()
                .and_then(|d| serde_json::from_slice::<serde_json::Map<String, Value>>(d).ok());
            let Some(mut chunk) = parsed else {
                out.extend_from_slice(&ev.raw);
                continue;
            };
            self.set_head(&chunk);
            let choice0 = chunk
                .get_mut("choices")
                .and_then(Value::as_array_mut)
                .and_then(|c| c.iter_mut().find(|c| c["index"].as_u64().unwrap_or(0) == 0));
            let Some(choice) = choice0 else {
                // Usage-only and error chunks: release what is held first (in order).
                if self.matches() {
                    return self.block(out);
                }
                self.release(true, out);
                out.extend_from_slice(&ev.raw);
                continue;
            };
            let text = choice
                .pointer_mut("/delta/content")
                .and_then(|c| c.as_str().map(str::to_string));
            let finish = choice
                .get("finish_reason")
                .filter(|f| !f.is_null())
                .cloned();
            if let Some(t) = text.filter(|t| !t.is_empty()) {
                self.text.push_str(&t);
                if let Some(d) = choice.get_mut("delta").and_then(Value::as_object_mut) {
                    d.remove("content");
                }
            }
            if self.matches() {
                return self.block(out);
            }
            // Whatever else the chunk carries (role, tool calls, reasoning) goes on, after
            // the text it follows; the finish reason ends the text.
            self.release(finish.is_some(), out);
            let delta_left = choice
                .get("delta")
                .and_then(Value::as_object)
                .is_some_and(|d| !d.is_empty());
            if delta_left || finish.is_some() {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&serde_json::to_vec(&chunk).unwrap_or_default());
                out.extend_from_slice(b"\n\n");
            }
        }
        Verdict::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_finds_each_kind_and_leaves_the_rest() {
        let r = Redactor::new();
        let text = "Mail jane.doe@example.com, call +44 20 7946 0958, card 4111 1111 1111 1111, \
                    IBAN GB82 WEST 1234 5698 7654 32, key sk-proj-abcdefghijklmnopqrstuv; order 12345.";
        let out = r.redact(text).unwrap();
        assert_eq!(
            out,
            "Mail [REDACTED_EMAIL], call [REDACTED_PHONE], card [REDACTED_CARD], \
                    IBAN [REDACTED_IBAN], key [REDACTED_SECRET]; order 12345."
        );
        // A number failing Luhn is not a card; nothing found is None.
        assert!(r
            .redact("card 4111 1111 1111 1112")
            .is_none_or(|o| !o.contains("CARD")));
        assert_eq!(r.redact("nothing to see here, 2026-12-02"), None);
    }

    fn chunk(text: &str) -> String {
        format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}]}}\n\n", serde_json::to_string(text).unwrap())
    }

    fn texts(out: &[u8]) -> String {
        let mut d = SseDecoder::new();
        d.push(out).unwrap();
        let mut s = String::new();
        while let Some(e) = d.next_event() {
            if let Some(v) = e
                .data
                .as_deref()
                .and_then(|d| serde_json::from_slice::<Value>(d).ok())
            {
                if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                    s.push_str(t);
                }
            }
        }
        s
    }

    #[test]
    fn a_match_split_across_chunks_is_caught_before_it_is_sent() {
        let set = RegexSet::new([r"(?i)secret plan"]).unwrap();
        let mut g = StreamGuard::new(set, 16);
        let mut out = bytes::BytesMut::new();
        for piece in ["Here is the sec", "ret", " pl", "an: attack at dawn"] {
            if g.feed(chunk(piece).as_bytes(), &mut out) == Verdict::Blocked {
                break;
            }
        }
        let sent = texts(&out);
        assert!(!sent.to_lowercase().contains("secret"), "{sent}");
        let raw = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            raw.contains("\"finish_reason\":\"content_filter\""),
            "{raw}"
        );
        assert_eq!(raw.matches("[DONE]").count(), 1);
    }

    #[test]
    fn clean_text_passes_whole_and_in_order() {
        let set = RegexSet::new([r"forbidden"]).unwrap();
        let mut g = StreamGuard::new(set, 4);
        let mut out = bytes::BytesMut::new();
        for piece in ["Hello", ", wor", "ld", "!"] {
            assert_eq!(g.feed(chunk(piece).as_bytes(), &mut out), Verdict::Pass);
        }
        let fin = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        assert_eq!(g.feed(fin.as_bytes(), &mut out), Verdict::Pass);
        assert_eq!(texts(&out), "Hello, world!");
        let raw = String::from_utf8(out.to_vec()).unwrap();
        assert!(raw.trim_end().ends_with("data: [DONE]"));
        assert!(raw.contains("\"finish_reason\":\"stop\""));
    }
}
