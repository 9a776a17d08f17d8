//! Token usage: the OpenAI `usage` object and cheap extraction from response bodies and stream
//! chunks.

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// OpenAI's `usage` object. Unknown fields (provider extensions) are preserved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Usage {
    /// Adds another round's usage (used when one client request spans several upstream calls).
    pub fn add(&mut self, other: &Usage) {
        // Upstream numbers: saturate rather than wrap.
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.total_tokens = self.total_tokens.saturating_add(other.total_tokens);
        if let Some(o) = other
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
        {
            let d = self
                .prompt_tokens_details
                .get_or_insert_with(Default::default);
            let c = d.cached_tokens.get_or_insert(0);
            *c = c.saturating_add(o);
        }
    }
}

/// Only the fields a relay needs from a response body or stream chunk; everything else is skipped
/// without being materialised, which keeps this cheap on every chunk.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
}

/// What one stream chunk says about usage.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkUsage {
    pub usage: Usage,
    /// The chunk carries usage and no choices: the extra chunk OpenAI sends for
    /// `stream_options.include_usage`.
    pub usage_only: bool,
}

/// Usage from a non-streaming response body (`None` if absent or the body is not JSON).
pub fn from_response_body(body: &[u8]) -> Option<Usage> {
    serde_json::from_slice::<Probe>(body).ok()?.usage
}

/// Usage carried by one `chat.completion.chunk` payload, if any.
pub fn from_chunk(data: &[u8]) -> Option<ChunkUsage> {
    // Most chunks carry no usage, or `"usage":null` (every chunk once `include_usage` is on):
    // skip the parse unless some `"usage"` key has a non-null value. Inside JSON strings the
    // quotes would be escaped, so every unescaped match is a key.
    if !has_non_null_usage(data) {
        return None;
    }
    let probe: Probe = serde_json::from_slice(data).ok()?;
    let usage = probe.usage?;
    Some(ChunkUsage {
        usage,
        usage_only: probe.choices.is_none_or(|c| c.is_empty()),
    })
}

/// What a relay saw of a stream besides usage: the tool calls the model made and how much text
/// it produced (for the usage estimate when a stream ends without a usage report).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Names of the tool calls the model started, in order.
    pub tool_calls: Vec<String>,
    /// Bytes of generated text (content and reasoning), as UTF-8.
    pub text_bytes: u64,
    /// Provider reasoning state the native translators emitted (see
    /// [`crate::reasoning::TurnState`]), for the server-side vault.
    pub reasoning: crate::reasoning::TurnState,
}

/// The gateway's one token estimate, for text it could not count: one token per 4 bytes,
/// rounded up (the usual rule of thumb for English with BPE tokenizers). Used for reservations
/// before a call and for usage a provider never reported.
pub fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

impl StreamStats {
    /// Completion tokens estimated from the text: one token per 4 bytes, rounded up (the usual
    /// rule of thumb for English with BPE tokenizers). Used only when no usage was reported.
    pub fn estimated_completion_tokens(&self) -> u64 {
        estimate_tokens(self.text_bytes as usize)
    }

    /// Records the text of a run of whole OpenAI chunk events (raw SSE bytes) that
    /// [`Lookouts`] found no mark in. Read from the raw bytes, a `"content":` in an SSE comment
    /// line would count too: this feeds only the estimate for streams that report no usage.
    pub fn observe_text(&mut self, run: &[u8]) {
        // One pass for both keys: `"content":` and `"reasoning_content":` share a tail.
        let len = CONTENT_TAIL.needle().len();
        for at in CONTENT_TAIL.find_iter(run) {
            let key = &run[..at];
            if key.ends_with(b"\"") || key.ends_with(b"\"reasoning_") {
                self.text_bytes += json_string_len(&run[at + len..]) as u64;
            }
        }
    }

    /// Records the text and tool-call names of one OpenAI chunk payload. Cheap when the chunk has
    /// neither: two substring searches.
    pub fn observe_chunk(&mut self, data: &[u8]) {
        self.observe_text(data);
        self.observe_tool_calls(data);
    }

    /// Records the tool-call names of one OpenAI chunk payload or whole response body.
    fn observe_tool_calls(&mut self, data: &[u8]) {
        if TOOL_CALLS_KEY.find(data).is_some() {
            #[derive(Deserialize)]
            struct P {
                #[serde(default)]
                choices: Vec<C>,
            }
            #[derive(Deserialize)]
            struct C {
                #[serde(default)]
                delta: Option<M>,
                #[serde(default)]
                message: Option<M>,
            }
            #[derive(Deserialize)]
            struct M {
                #[serde(default)]
                tool_calls: Option<Vec<T>>,
            }
            #[derive(Deserialize)]
            struct T {
                #[serde(default)]
                function: Option<F>,
            }
            #[derive(Deserialize)]
            struct F {
                #[serde(default)]
                name: Option<String>,
            }
            if let Ok(p) = serde_json::from_slice::<P>(data) {
                for c in p.choices {
                    for t in c
                        .delta
                        .or(c.message)
                        .and_then(|m| m.tool_calls)
                        .unwrap_or_default()
                    {
                        if let Some(n) = t.function.and_then(|f| f.name).filter(|n| !n.is_empty()) {
                            self.tool_calls.push(n);
                        }
                    }
                }
            }
        }
    }
}

/// Length in bytes of the JSON string starting at `s` (after optional whitespace), escapes
/// counted as one byte each; 0 if `s` does not start with a string.
fn json_string_len(s: &[u8]) -> usize {
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_whitespace() {
        i += 1;
    }
    if s.get(i) != Some(&b'"') {
        return 0;
    }
    i += 1;
    let start = i;
    let mut escapes = 0;
    while i < s.len() {
        match s[i] {
            b'"' => return i - start - escapes,
            b'\\' => {
                // `\n` is one character; `\uXXXX` roughly one as well.
                let skip = if s.get(i + 1) == Some(&b'u') { 5 } else { 1 };
                escapes += skip;
                i += skip + 1;
            }
            _ => i += 1,
        }
    }
    0
}

/// Tool-call names in a non-streaming `chat.completion` body.
pub fn tool_calls_from_body(body: &[u8]) -> Vec<String> {
    // Only the names: a whole answer's text needs no estimate.
    let mut s = StreamStats::default();
    s.observe_tool_calls(body);
    s.tool_calls
}

// Substring searchers are built once: building one costs more than searching a chunk.
static USAGE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
/// The end of the keys whose string values are generated text: `"content":` and
/// `"reasoning_content":`.
static CONTENT_TAIL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"content\":"));
static TOOL_CALLS_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"tool_calls\""));

/// The places in raw OpenAI stream bytes that a relay must see event by event: the end
/// (`[DONE]`), a usage report, tool calls. Everything between them is plain content it forwards
/// as it came. Each kind of mark is searched for again only once the relay has passed the last
/// one found, so a run is scanned once per kind however many marks it holds.
pub struct Lookouts<'a> {
    run: &'a [u8],
    /// Next offset of each kind of mark; `None` when there is none further on.
    next: [Option<usize>; 3],
}

impl<'a> Lookouts<'a> {
    pub fn new(run: &'a [u8]) -> Self {
        let mut l = Self {
            run,
            next: [None; 3],
        };
        for kind in 0..3 {
            l.next[kind] = l.find(kind, 0);
        }
        l
    }

    /// The first mark at or after `from`.
    pub fn first_from(&mut self, from: usize) -> Option<usize> {
        for kind in 0..3 {
            if self.next[kind].is_some_and(|at| at < from) {
                self.next[kind] = self.find(kind, from);
            }
        }
        self.next.iter().flatten().min().copied()
    }

    fn find(&self, kind: usize, from: usize) -> Option<usize> {
        let hay = &self.run[from..];
        let at = match kind {
            0 => DONE_MARK.find(hay),
            1 => TOOL_CALLS_KEY.find(hay),
            _ => USAGE_KEY
                .find_iter(hay)
                .find(|&at| value_is_not_null(&hay[at + USAGE_KEY.needle().len()..])),
        };
        at.map(|at| from + at)
    }
}

static DONE_MARK: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"[DONE]"));

fn has_non_null_usage(data: &[u8]) -> bool {
    USAGE_KEY
        .find_iter(data)
        .any(|at| value_is_not_null(&data[at + USAGE_KEY.needle().len()..]))
}

/// After a key: whether the value that follows the colon is anything but `null`.
fn value_is_not_null(rest: &[u8]) -> bool {
    let mut i = 0;
    while i < rest.len() && (rest[i].is_ascii_whitespace() || rest[i] == b':') {
        i += 1;
    }
    !rest[i..].starts_with(b"null")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_usage_with_details_and_unknown_fields() {
        let u = from_response_body(
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,
            "prompt_tokens_details":{"cached_tokens":2,"audio_tokens":0},"queue_time":0.1}}"#,
        )
        .unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (3, 4, 7)
        );
        assert_eq!(
            u.prompt_tokens_details.as_ref().unwrap().cached_tokens,
            Some(2)
        );
        assert!(u.extra.contains_key("queue_time"));
        let back = serde_json::to_value(&u).unwrap();
        assert_eq!(back["prompt_tokens_details"]["audio_tokens"], 0);
    }

    #[test]
    fn chunk_usage_kinds() {
        assert_eq!(from_chunk(br#"{"choices":[{"delta":{}}]}"#), None);
        assert_eq!(
            from_chunk(br#"{"choices":[{"delta":{}}],"usage":null}"#),
            None
        );
        let only = from_chunk(
            br#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        )
        .unwrap();
        assert!(only.usage_only);
        assert_eq!(only.usage.total_tokens, 3);
        let inline = from_chunk(br#"{"choices":[{"delta":{"content":"a"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#).unwrap();
        assert!(!inline.usage_only);
    }

    #[test]
    fn add_sums_rounds() {
        let mut a = Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
            ..Default::default()
        };
        let b = Usage {
            prompt_tokens: 10,
            completion_tokens: 20,
            total_tokens: 30,
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: Some(5),
                ..Default::default()
            }),
            ..Default::default()
        };
        a.add(&b);
        assert_eq!(
            (a.prompt_tokens, a.completion_tokens, a.total_tokens),
            (11, 22, 33)
        );
        assert_eq!(a.prompt_tokens_details.unwrap().cached_tokens, Some(5));
    }

    #[test]
    fn null_usage_fast_path() {
        assert_eq!(
            from_chunk(br#"{"choices":[{"delta":{}}],"usage" : null }"#),
            None
        );
        assert_eq!(
            from_chunk(br#"{"choices":[{"delta":{"content":"say \"usage\": 1"}}]}"#),
            None
        );
        let spaced = from_chunk(
            br#"{"choices":[], "usage" : {"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#,
        )
        .unwrap();
        assert_eq!(spaced.usage.total_tokens, 2);
        assert!(spaced.usage_only);
    }

    #[test]
    fn stream_stats() {
        let mut s = StreamStats::default();
        s.observe_chunk(br#"{"choices":[{"delta":{"content":"h\u00e9llo \"x\""}}]}"#);
        assert_eq!(s.text_bytes, 9);
        s.observe_chunk(br#"{"choices":[{"delta":{"content":null}}]}"#);
        s.observe_chunk(br#"{"choices":[{"delta":{"reasoning_content":"abcd"}}]}"#);
        assert_eq!(s.text_bytes, 13);
        // Another key with the same ending is not generated text.
        s.observe_chunk(br#"{"choices":[{"delta":{"x_content":"zz","content":"y"}}]}"#);
        assert_eq!(s.text_bytes, 14);
        assert_eq!(s.estimated_completion_tokens(), 4);
        s.observe_chunk(br#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"get_weather","arguments":""}}]}}]}"#);
        s.observe_chunk(br#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}"#);
        assert_eq!(s.tool_calls, vec!["get_weather"]);
        assert_eq!(
            tool_calls_from_body(br#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"f1","arguments":"{}"}},{"id":"b","type":"function","function":{"name":"f2","arguments":"{}"}}]}}]}"#),
            vec!["f1", "f2"]
        );
    }
}
