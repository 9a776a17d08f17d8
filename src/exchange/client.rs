//! The client side of an exchange: one writer for every SSE answer (a plain stream, the MCP
//! loop's rounds, any door), and the one place that watches for a client hanging up while the
//! gateway waits on a provider or a tool.

use std::future::Future;
use std::time::Instant;

use bytes::BytesMut;
use filters::doors::StreamEncoder;
use http::HeaderValue;
use pingora::proxy::Session;

use super::plan::Plan;
use crate::proxy::{respond, Gateway, RequestCtx};
use crate::routing::Route;

/// Runs `work` unless the client hangs up first, which gives `None` (and drops `work`: an
/// upstream call's connection is closed, a tool call cancelled). The caller records the hang-up
/// ([`RequestCtx::client_left`]; `work` may hold the record); the connection is never reused
/// (the probe may have read a byte of a pipelined request).
pub(super) async fn unless_client_leaves<T>(
    session: &mut Session,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        r = work => Some(r),
        _ = session.as_downstream_mut().read_body_or_idle(true) => {
            session.set_keepalive(None);
            None
        }
    }
}

/// The client hung up (a failed write).
pub(super) fn mark_client_gone(session: &mut Session, ctx: &mut RequestCtx) {
    ctx.client_left();
    session.set_keepalive(None);
}

/// Counts a stream in `llm_active_streams` (when metrics are on) and in the admin API's stats
/// while it lives.
pub(super) struct ActiveStream(Option<prometheus::IntGauge>);

impl ActiveStream {
    pub(super) fn new(gw: &Gateway, provider: &str) -> Self {
        let g = gw
            .metrics
            .as_ref()
            .map(|m| m.active_streams.with_label_values(&[provider]));
        if let Some(g) = &g {
            g.inc();
        }
        crate::stats::stream_started();
        ActiveStream(g)
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
        crate::stats::stream_ended();
    }
}

/// An SSE answer: headers once, canonical events encoded for the door as they are written,
/// time to first token and inter-token gaps recorded, one tail.
pub(super) struct ClientStream {
    pub(super) headers_sent: bool,
    /// The stream's last write was made.
    pub(super) closed: bool,
    /// Canonical SSE waiting to be written.
    pub(super) buf: BytesMut,
    first_write: Option<Instant>,
    last_write: Instant,
    /// `llm_inter_token_latency_seconds` for this stream, when metrics are on.
    itl: Option<prometheus::Histogram>,
    /// The door's encoder when the client's API is not the canonical one.
    encoder: Option<Box<dyn StreamEncoder>>,
    encoded: BytesMut,
}

impl ClientStream {
    pub(super) fn new(encoder: Option<Box<dyn StreamEncoder>>) -> Self {
        ClientStream {
            headers_sent: false,
            closed: false,
            // A few events' worth (grown when a read brings more): an idle stream holds it.
            buf: BytesMut::with_capacity(1024),
            first_write: None,
            last_write: Instant::now(),
            itl: None,
            encoder,
            encoded: BytesMut::new(),
        }
    }

    /// `200 text/event-stream` with the gateway's headers; `false` when the client is gone.
    pub(super) async fn send_headers(
        &mut self,
        gw: &Gateway,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        plan: &Plan,
    ) -> bool {
        // Gaps between writes (tool time included in a loop: it is what the client waits).
        self.itl = gw.metrics.as_ref().map(|m| {
            m.inter_token_latency.with_label_values(&[
                route.provider.name.as_str(),
                crate::proxy::record::bounded_model(&route.upstream_model),
            ])
        });
        let mut map = respond::header_map("text/event-stream", ctx);
        map.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        map.insert(respond::X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
        gateway_headers(&mut map, ctx, route, plan);
        if !session.is_http2() {
            map.insert(
                http::header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        let h = respond::finish_header(200, map, ctx);
        ctx.answer.status = 200;
        self.headers_sent = true;
        if Box::pin(session.write_response_header(Box::new(h), false))
            .await
            .is_err()
        {
            mark_client_gone(session, ctx);
            return false;
        }
        true
    }

    /// A keep-alive in the door's terms (an SSE comment; Anthropic's `ping`).
    pub(super) fn keepalive(&mut self, comment: &[u8]) {
        self.buf.extend_from_slice(comment);
    }

    /// Writes what is buffered (`last`: and ends the body); `false` when the client is gone.
    pub(super) async fn flush(
        &mut self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        last: bool,
    ) -> bool {
        if self.buf.is_empty() && !last {
            return true;
        }
        let data = match &mut self.encoder {
            Some(enc) => {
                enc.feed(&self.buf, &mut self.encoded);
                self.buf.clear();
                if last {
                    if let Some(d) = enc.document() {
                        ctx.answer.document = Some(d.into());
                    }
                }
                self.encoded.split().freeze()
            }
            None => self.buf.split().freeze(),
        };
        if data.is_empty() && !last {
            return true;
        }
        self.closed |= last;
        ctx.answer.bytes_out += data.len();
        if ctx.log_bodies {
            // The stream as sent, up to the request log's limit.
            let kept = ctx.answer.logged_body.get_or_insert_with(String::new);
            let room = crate::request_log::MAX_BODY.saturating_sub(kept.len());
            if room > 0 {
                kept.push_str(&String::from_utf8_lossy(&data[..data.len().min(room)]));
            }
        }
        if !data.is_empty() {
            let now = Instant::now();
            match (self.first_write, &self.itl) {
                (None, _) => {
                    self.first_write = Some(now);
                    ctx.answer.ttft = Some(now - ctx.start);
                }
                (Some(_), Some(h)) => h.observe((now - self.last_write).as_secs_f64()),
                _ => {}
            }
            self.last_write = now;
        }
        // Boxed: a stream's state (which holds this future between writes) stays small.
        if Box::pin(session.write_response_body(Some(data), last))
            .await
            .is_err()
        {
            mark_client_gone(session, ctx);
            return false;
        }
        true
    }

    /// A gateway error after the stream started: an error event, then the tail.
    pub(super) async fn error_event(
        &mut self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        e: &crate::errors::ApiError,
    ) {
        ctx.answer.error = Some(e.code.unwrap_or("error"));
        filters::sse::encode_data(&e.body(), &mut self.buf);
        self.buf.extend_from_slice(filters::sse::DONE);
        self.flush(session, ctx, true).await;
    }

    /// First write to last write, for the record.
    pub(super) fn generation(&self) -> Option<std::time::Duration> {
        self.first_write.map(|f| self.last_write - f)
    }
}

pub(super) fn gateway_headers(
    h: &mut http::HeaderMap,
    ctx: &RequestCtx,
    route: &Route,
    plan: &Plan,
) {
    if let Ok(v) = HeaderValue::from_str(&route.provider.name) {
        h.insert(respond::X_GATEWAY_PROVIDER, v);
    }
    // What the door could not carry (unless relayed as sent), then what the dialect could not.
    let door_dropped = ctx
        .original
        .as_ref()
        .filter(|_| plan.relayed.is_none())
        .map_or(&[][..], |d| &d.dropped[..]);
    if !plan.dropped.is_empty() || !door_dropped.is_empty() {
        let all: Vec<&str> = door_dropped
            .iter()
            .chain(&plan.dropped)
            .map(String::as_str)
            .collect();
        if let Ok(v) = HeaderValue::from_str(&all.join(",")) {
            h.insert(respond::X_GATEWAY_DROPPED_PARAMS, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&route.upstream_model) {
        h.insert(respond::X_GATEWAY_MODEL, v);
    }
}
