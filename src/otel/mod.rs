//! OpenTelemetry traces (README "Tracing"): a server span per request with children for the
//! cache lookup, every upstream attempt and every tool the gateway runs, named and attributed
//! after the GenAI semantic conventions; W3C trace context in and out.
//!
//! Cheap by construction: the sampling decision is made when the request arrives, and an
//! unsampled request carries `None` (no span is built). A sampled request collects its spans in
//! its own context, with no lock and no I/O, and hands them over once, when it is logged, to a
//! bounded queue that a background service exports in batches (`export`).

pub mod export;
pub mod proto;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::otel::OtelConfig;

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
    F64(f64),
    Bool(bool),
    Strs(Vec<String>),
}

impl From<&str> for Attr {
    fn from(s: &str) -> Self {
        Attr::Str(s.to_string())
    }
}
impl From<String> for Attr {
    fn from(s: String) -> Self {
        Attr::Str(s)
    }
}
impl From<u64> for Attr {
    fn from(v: u64) -> Self {
        Attr::Int(v.min(i64::MAX as u64) as i64)
    }
}
impl From<i64> for Attr {
    fn from(v: i64) -> Self {
        Attr::Int(v)
    }
}
impl From<f64> for Attr {
    fn from(v: f64) -> Self {
        Attr::F64(v)
    }
}
impl From<bool> for Attr {
    fn from(v: bool) -> Self {
        Attr::Bool(v)
    }
}

/// One finished (or, while the request runs, open) span.
#[derive(Debug, Clone)]
pub struct SpanData {
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub name: String,
    pub kind: Kind,
    pub start: Instant,
    pub end: Option<Instant>,
    pub attrs: Vec<(&'static str, Attr)>,
    /// The span ended in error: its description (`Status { code: ERROR }`).
    pub error: Option<String>,
}

impl SpanData {
    pub fn set(&mut self, key: &'static str, value: impl Into<Attr>) {
        self.attrs.push((key, value.into()));
    }
}

/// A span id: random and never zero.
fn span_id() -> SpanId {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

fn trace_id() -> TraceId {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

fn hex(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        let d = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        *o = (d(b[2 * i])? << 4) | d(b[2 * i + 1])?;
    }
    Some(out)
}

/// A parent from a W3C `traceparent` header: `00-<trace id>-<parent id>-<flags>`. Unknown
/// versions are read by their first four fields (the specification says so); anything
/// malformed, or with an all-zero id, is ignored (the request starts a new trace).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteParent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub flags: u8,
}

/// The caller's `tracestate`: every header of the name joined, as W3C says, and cut to whole
/// list members within 512 characters.
fn trace_state(req: &pingora::http::RequestHeader) -> Option<String> {
    let mut out = String::new();
    for member in req
        .headers
        .get_all("tracestate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        if out.len() + member.len() + 1 > 512 {
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(member);
    }
    (!out.is_empty()).then_some(out)
}

pub fn parse_traceparent(h: &str) -> Option<RemoteParent> {
    let mut it = h.trim().split('-');
    let version = it.next()?;
    let (trace, span, flags) = (it.next()?, it.next()?, it.next()?);
    if version.len() != 2 || version == "ff" || unhex::<1>(version).is_none() {
        return None;
    }
    if version == "00" && it.next().is_some() {
        return None;
    }
    let trace_id = unhex::<16>(trace).filter(|t| *t != [0; 16])?;
    let span_id = unhex::<8>(span).filter(|s| *s != [0; 8])?;
    let flags = unhex::<1>(flags)?[0];
    Some(RemoteParent {
        trace_id,
        span_id,
        flags,
    })
}

/// The sampling decision for a new request.
#[derive(Debug, Clone, Copy)]
enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Sampled when the trace id's low 63 bits fall under this bound.
    Ratio(u64),
}

impl Sampler {
    fn samples(self, trace_id: &TraceId) -> bool {
        match self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::Ratio(bound) => {
                let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
                (low >> 1) < bound
            }
        }
    }
}

/// A request's trace: its server span's identity, and the child spans collected as it runs.
pub struct Trace {
    pub trace_id: TraceId,
    /// The server span.
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub flags: u8,
    pub trace_state: Option<String>,
    pub start: Instant,
    pub children: Vec<SpanData>,
    /// The attempt whose answer is being relayed, ended when the request ends.
    pub open_attempt: Option<usize>,
    /// Server-span attributes gathered on the way (request parameters, messages).
    pub attrs: Vec<(&'static str, Attr)>,
    /// `gen_ai.output.messages` wanted: the answer's text is kept for it.
    pub capture_content: bool,
}

impl Trace {
    /// Starts a child span of the server span; returns its index in `children`.
    pub fn child(&mut self, name: String, kind: Kind, start: Instant) -> usize {
        self.children.push(SpanData {
            span_id: span_id(),
            parent: Some(self.span_id),
            name,
            kind,
            start,
            end: None,
            attrs: Vec::new(),
            error: None,
        });
        self.children.len() - 1
    }

    /// The `traceparent` for a call made inside `span`.
    pub fn traceparent(&self, span: &SpanId) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        hex(&self.trace_id, &mut s);
        s.push('-');
        hex(span, &mut s);
        s.push('-');
        hex(&[self.flags], &mut s);
        s
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Attr>) {
        self.attrs.push((key, value.into()));
    }

    /// Ends the attempt still open (its answer has been relayed), if any.
    pub fn end_open_attempt(&mut self, at: Instant) -> Option<&mut SpanData> {
        let i = self.open_attempt.take()?;
        let s = self.children.get_mut(i)?;
        s.end = Some(at);
        Some(s)
    }
}

/// The server span's last attributes, from the finished request's record.
pub struct ServerSpan {
    pub name: String,
    pub attrs: Vec<(&'static str, Attr)>,
    pub error: Option<String>,
}

/// Spans waiting for the exporter, bounded by `bsp_max_queue_size` and by their encoded size
/// ([`MAX_QUEUED_BYTES`]: captured content can make spans large).
#[derive(Default)]
struct Queue {
    spans: Vec<proto::Span>,
    bytes: usize,
}

/// Encoded bytes of spans waiting for export, at most.
const MAX_QUEUED_BYTES: usize = 64 << 20;

/// Longest string attribute (captured messages, tool arguments and results are cut here, at a
/// character boundary).
pub const MAX_ATTRIBUTE_BYTES: usize = 64 << 10;

pub struct Tracer {
    sampler: Sampler,
    /// Follow the caller's sampled flag when it sends a `traceparent`.
    parent_based: bool,
    pub capture_content: bool,
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
    max_queue: usize,
    pub(crate) batch: usize,
    pub(crate) cfg: OtelConfig,
    pub(crate) url: String,
    /// Reference point to turn `Instant`s into Unix nanoseconds.
    epoch: (Instant, u64),
    pub dropped: AtomicU64,
    pub exported: AtomicU64,
    pub(crate) metrics: Option<Arc<crate::metrics::Metrics>>,
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Tracer {
    /// A tracer when an OTLP endpoint is configured (and the SDK is not disabled).
    pub fn from_config(
        cfg: &OtelConfig,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Option<Arc<Tracer>> {
        let url = cfg.traces_url()?;
        let ratio = cfg.traces_sampler_arg.unwrap_or(1.0);
        let root = |name: &str| match name {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            _ if ratio >= 1.0 => Sampler::AlwaysOn,
            _ => Sampler::Ratio((ratio * (1u64 << 63) as f64) as u64),
        };
        let name = cfg.traces_sampler.as_str();
        let parent_based = name.starts_with("parentbased_");
        Some(Arc::new(Tracer {
            sampler: root(name.trim_start_matches("parentbased_")),
            parent_based,
            capture_content: cfg.instrumentation_genai_capture_message_content,
            queue: Mutex::new(Queue::default()),
            wake: tokio::sync::Notify::new(),
            max_queue: cfg.bsp_max_queue_size,
            // A batch larger than the queue would never fill (the specification clamps it).
            batch: cfg.bsp_max_export_batch_size.min(cfg.bsp_max_queue_size),
            cfg: cfg.clone(),
            url,
            epoch: (Instant::now(), unix_nanos()),
            dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
            metrics,
        }))
    }

    /// The trace of a new request, if it is sampled.
    pub fn start(&self, req: &pingora::http::RequestHeader, start: Instant) -> Option<Box<Trace>> {
        // Two traceparent headers are as good as none (W3C).
        let mut all = req.headers.get_all("traceparent").iter();
        let parent = match (all.next(), all.next()) {
            (Some(v), None) => v.to_str().ok().and_then(parse_traceparent),
            _ => None,
        };
        let sampled = match &parent {
            Some(p) if self.parent_based => p.flags & 1 == 1,
            Some(p) => self.sampler.samples(&p.trace_id),
            None => {
                // The id is made before the decision: a ratio sampler reads it.
                let id = trace_id();
                return self
                    .sampler
                    .samples(&id)
                    .then(|| self.new_trace(id, None, 0, start, req));
            }
        };
        let p = parent.expect("matched Some");
        sampled.then(|| self.new_trace(p.trace_id, Some(p.span_id), p.flags, start, req))
    }

    fn new_trace(
        &self,
        trace_id: TraceId,
        parent: Option<SpanId>,
        flags: u8,
        start: Instant,
        req: &pingora::http::RequestHeader,
    ) -> Box<Trace> {
        let trace_state = parent.and_then(|_| trace_state(req));
        Box::new(Trace {
            trace_id,
            span_id: span_id(),
            parent,
            // Sampled, and whatever else the caller's flags say (the random-trace-id bit).
            flags: flags | 1,
            trace_state,
            start,
            children: Vec::new(),
            open_attempt: None,
            attrs: Vec::new(),
            capture_content: self.capture_content,
        })
    }

    fn nanos(&self, at: Instant) -> u64 {
        let (i0, n0) = self.epoch;
        match at.checked_duration_since(i0) {
            Some(d) => n0 + d.as_nanos() as u64,
            None => n0.saturating_sub(i0.duration_since(at).as_nanos() as u64),
        }
    }

    fn encode(&self, trace: &Trace, s: SpanData, now: Instant) -> proto::Span {
        let remote_parent = s.kind == Kind::Server && s.parent.is_some();
        proto::Span {
            trace_id: trace.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            trace_state: trace.trace_state.clone().unwrap_or_default(),
            parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: s.name,
            kind: s.kind as i32,
            start_time_unix_nano: self.nanos(s.start),
            end_time_unix_nano: self.nanos(s.end.unwrap_or(now)),
            attributes: s.attrs.into_iter().map(key_value).collect(),
            status: s.error.map(|message| proto::Status { message, code: 2 }),
            // Bit 8: whether the parent is remote is known; bit 9: it is.
            flags: u32::from(trace.flags) | 0x100 | if remote_parent { 0x200 } else { 0 },
        }
    }

    /// Hands a finished request's spans to the exporter (dropped, and counted, when the queue
    /// is full: tracing never holds a request up).
    pub fn finish(&self, mut trace: Box<Trace>, server: ServerSpan) {
        let now = Instant::now();
        let mut attrs = std::mem::take(&mut trace.attrs);
        attrs.extend(server.attrs);
        let root = SpanData {
            span_id: trace.span_id,
            parent: trace.parent,
            name: server.name,
            kind: Kind::Server,
            start: trace.start,
            end: Some(now),
            attrs,
            error: server.error,
        };
        let children = std::mem::take(&mut trace.children);
        let mut spans = Vec::with_capacity(children.len() + 1);
        spans.push(self.encode(&trace, root, now));
        for c in children {
            spans.push(self.encode(&trace, c, now));
        }
        let n = spans.len();
        let bytes: usize = spans.iter().map(prost::Message::encoded_len).sum();
        let wake = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.spans.len() + n > self.max_queue || q.bytes + bytes > MAX_QUEUED_BYTES {
                drop(q);
                self.count_dropped(n as u64);
                return;
            }
            q.bytes += bytes;
            q.spans.extend(spans);
            q.spans.len() >= self.batch
        };
        if wake {
            self.wake.notify_one();
        }
    }

    pub(crate) fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.trace_spans.with_label_values(&["dropped"]).inc_by(n);
        }
    }

    /// Up to one batch of queued spans.
    pub(crate) fn take_batch(&self) -> Vec<proto::Span> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let batch = if q.spans.len() <= self.batch {
            std::mem::take(&mut q.spans)
        } else {
            let rest = q.spans.split_off(self.batch);
            std::mem::replace(&mut q.spans, rest)
        };
        let bytes: usize = batch.iter().map(prost::Message::encoded_len).sum();
        q.bytes = q.bytes.saturating_sub(bytes);
        batch
    }

    /// Where spans go (may carry credentials: log it through `store::redacted`).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub(crate) async fn woken(&self) {
        self.wake.notified().await
    }
}

fn key_value((key, value): (&'static str, Attr)) -> proto::KeyValue {
    use proto::any_value::Value as V;
    let s = |mut s: String| {
        if s.len() > MAX_ATTRIBUTE_BYTES {
            let mut end = MAX_ATTRIBUTE_BYTES;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
        }
        proto::AnyValue {
            value: Some(V::StringValue(s)),
        }
    };
    let value = match value {
        Attr::Str(v) => s(v),
        Attr::Int(i) => proto::AnyValue {
            value: Some(V::IntValue(i)),
        },
        Attr::F64(f) => proto::AnyValue {
            value: Some(V::DoubleValue(f)),
        },
        Attr::Bool(b) => proto::AnyValue {
            value: Some(V::BoolValue(b)),
        },
        Attr::Strs(list) => proto::AnyValue {
            value: Some(V::ArrayValue(proto::ArrayValue {
                values: list.into_iter().map(s).collect(),
            })),
        },
    };
    proto::KeyValue {
        key: key.to_string(),
        value: Some(value),
    }
}

/// The W3C trace context headers of the caller, forwarded as they came when the request is not
/// traced (the gateway is then not a participant: the upstream sees the caller's parent).
pub const CONTEXT_HEADERS: [&str; 3] = ["traceparent", "tracestate", "baggage"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing_follows_the_w3c_rules() {
        let p =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(p.flags, 1);
        assert_eq!(p.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        // A later version with more fields is read by its first four.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra")
                .is_some()
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f35-00f067aa0ba902b7-01",
            "",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ratio_sampler_keeps_about_its_share() {
        let s = Sampler::Ratio((0.25 * (1u64 << 63) as f64) as u64);
        let kept = (0..20_000).filter(|_| s.samples(&trace_id())).count();
        assert!((4_000..6_000).contains(&kept), "{kept}");
    }
}
