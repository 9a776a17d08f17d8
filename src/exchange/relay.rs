//! The answer to the client: an upstream error relayed in the door's envelope, a whole body
//! (translated from the dialect, encoded for the door), or a stream relayed event by event
//! through the dialect's translator and the client writer.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use filters::dialects::{self, Dialect, StreamTranslator};
use filters::doors::Door;
use filters::stream_relay::{OpenAiStreamRelay, StreamEnd};
use filters::usage;
use futures::FutureExt;

use super::client::{gateway_headers, unless_client_leaves, ActiveStream, ClientStream};
use super::plan::Plan;
use super::unix_now;
use super::Exchange;
use crate::errors::{ApiError, Code};
use crate::proxy::{respond, Gateway, RequestCtx};
use crate::routing::Route;
use crate::upstream::{UpstreamError, UpstreamResponse};

/// Most of a streamed answer kept for `gen_ai.output.messages` (content capture only).
const CAPTURE_LIMIT: usize = 1 << 20;
/// Most bytes of already-arrived upstream reads gathered into one client write.
const COALESCE_BYTES: usize = 64 * 1024;

/// Reads a whole successful response and returns it as an OpenAI body (translated from the
/// provider's native format when needed): `(status, body, content type)`.
pub(super) async fn read_openai_body(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    mut resp: UpstreamResponse,
    route: &Route,
    plan: &Plan,
) -> Result<(u16, Bytes, String), ApiError> {
    let provider = &route.provider.name;
    let waited = Instant::now();
    let read = resp.read_all(gw.cfg.client.max_response_body_size).await;
    ctx.upstream.wait += waited.elapsed();
    let raw = read.map_err(|e| {
        ctx.upstream.failure = Some(e.reason());
        ApiError::upstream(&e, provider)
    })?;
    let content_type = resp
        .header_str("content-type")
        .unwrap_or("application/json")
        .to_string();
    let status = resp.status();
    gw.client.release(resp).await;
    if plan.relayed.is_some() {
        return Ok((status, raw, content_type));
    }
    match plan.dialect {
        Dialect::Openai => Ok((status, raw, content_type)),
        d => {
            let t = dialects::translate_response_with(
                d,
                &raw,
                &route.upstream_model,
                unix_now(),
                plan.json_tool.as_deref(),
            )
            .map_err(|e| {
                ctx.upstream.failure = Some("invalid_response");
                match e.code {
                    // Read, but the provider says it failed (a malformed tool call...).
                    Some(_) => ApiError::of(
                        Code::UpstreamInvalidOutput,
                        format!("provider {provider}: {}", e.message),
                    ),
                    None => ApiError::of(
                        Code::UpstreamInvalidResponse,
                        format!(
                            "provider {provider} sent a response the gateway cannot read: {}",
                            e.message
                        ),
                    ),
                }
            })?;
            Ok((status, Bytes::from(t.body), "application/json".to_string()))
        }
    }
}

/// The stream relay for a plan: OpenAI streams pass through, native ones are translated.
/// `loop_round`: the MCP loop reads every round's usage itself, so nothing is stripped.
pub(super) fn stream_translator(
    gw: &Gateway,
    route: &Route,
    plan: &Plan,
    loop_round: bool,
) -> Box<dyn StreamTranslator> {
    let max_event = gw.cfg.client.max_response_body_size;
    if let Some(door) = plan.relayed {
        return door.relay_observer(max_event);
    }
    match plan.dialect {
        Dialect::Openai => Box::new(OpenAiStreamRelay::new(
            plan.strip_usage_chunk && !loop_round,
            max_event,
        )),
        d => dialects::stream_translator_with(
            d,
            &route.upstream_model,
            unix_now(),
            plan.client_include_usage || loop_round,
            max_event,
            plan.json_tool.as_deref(),
        ),
    }
}

/// Feeds one upstream read into the stream translator. When the stream is over (clean end,
/// read error, oversized event) the translator is finished (error event, one `[DONE]`) and the
/// end is returned.
pub(super) fn feed_read(
    ctx: &mut RequestCtx,
    provider: &str,
    translator: &mut dyn StreamTranslator,
    next: Result<Option<Bytes>, UpstreamError>,
    out: &mut BytesMut,
) -> Option<StreamEnd> {
    let end = match next {
        Ok(Some(chunk)) => match translator.feed_bytes(chunk, out) {
            Ok(()) => return None,
            Err(_) => {
                ctx.upstream.failure = Some("oversized_event");
                StreamEnd::Failed {
                    message: format!("provider {provider} sent an oversized stream event"),
                    code: "upstream_stream_error",
                }
            }
        },
        Ok(None) => StreamEnd::Clean,
        Err(e) => {
            ctx.upstream.failure = Some(match e {
                UpstreamError::IdleTimeout => "stream_idle_timeout",
                _ => "stream_interrupted",
            });
            StreamEnd::Failed {
                message: e.message(provider),
                code: e.code(),
            }
        }
    };
    translator.finish(end.clone(), out);
    Some(end)
}

/// The door's stream encoder, unless the answer is relayed in the door's own API.
pub(super) fn door_encoder(
    ctx: &RequestCtx,
    route: &Route,
    plan: &Plan,
) -> Option<Box<dyn filters::doors::StreamEncoder>> {
    if plan.relayed.is_some() {
        return None;
    }
    ctx.door.stream_encoder(
        &route.upstream_model,
        ctx.responses.as_ref().map(|t| &t.meta),
    )
}

/// A canonical body in the door's API (unchanged when relayed or when the door is canonical);
/// the door's copy to keep goes to `ctx.answer.document`.
pub(super) fn door_body(ctx: &mut RequestCtx, plan: &Plan, body: Bytes) -> Result<Bytes, ApiError> {
    if plan.relayed.is_some() {
        if ctx.responses.is_some() {
            ctx.answer.document = Some(body.clone());
        }
        return Ok(body);
    }
    let meta = ctx.responses.as_ref().map(|t| &t.meta);
    match ctx.door.encode_response(&body, meta) {
        None => Ok(body),
        Some(Ok(e)) => {
            let body = Bytes::from(e.body);
            if ctx.responses.is_some() {
                ctx.answer.document = Some(e.document.map_or_else(|| body.clone(), Bytes::from));
            }
            Ok(body)
        }
        Some(Err(e)) => Err(ApiError::of(
            Code::UpstreamInvalidResponse,
            format!(
                "the provider's answer cannot be given in the client's API: {}",
                e.message
            ),
        )),
    }
}

impl<'g> Exchange<'g, '_> {
    /// Upstream answered with an error status: pass the status through, in the door's envelope.
    pub(super) async fn relay_error(
        &mut self,
        provider: &str,
        dialect: Dialect,
        mut resp: UpstreamResponse,
    ) -> Result<(), ApiError> {
        let status = resp.status();
        let limit = self.gw.cfg.client.max_response_body_size.min(1 << 20);
        let waited = Instant::now();
        let read = resp.read_all(limit).await;
        self.ctx.upstream.wait += waited.elapsed();
        let body = match read {
            Ok(b) => b,
            Err(UpstreamError::TooLarge) => Bytes::new(),
            Err(e) => return Err(ApiError::upstream(&e, provider)),
        };
        let mut h = respond::header(status, "application/json", self.ctx);
        for (k, v) in resp.header().headers.iter() {
            let n = k.as_str();
            // A key's own x-ratelimit-* (set by `respond::header`) are not replaced by the
            // provider account's.
            if n == "retry-after"
                || (n.starts_with("x-ratelimit-") && self.ctx.caller.rate_headers.is_none())
            {
                let _ = h.insert_header(k.clone(), v.clone());
            }
        }
        self.gw.client.release(resp).await;
        self.ctx.answer.error = Some("upstream_error");
        // OpenAI-style bodies pass unchanged; native and non-JSON ones are mapped to the envelope,
        // then to the door's.
        let body = Bytes::from(dialects::translate_error(dialect, status, provider, &body));
        let body = match self.ctx.door.encode_error(status, &body) {
            Some((door_status, b)) => {
                if door_status != status {
                    h.set_status(door_status).expect("valid status");
                }
                Bytes::from(b)
            }
            None => body,
        };
        let _ = respond::full(self.session, self.ctx, h, body).await;
        Ok(())
    }

    /// Non-streaming success: relay the body byte-for-byte (OpenAI dialect) or translated, and
    /// record its usage.
    pub(super) async fn relay_whole(
        &mut self,
        resp: UpstreamResponse,
        route: &Route,
        plan: &Plan,
    ) -> Result<(), ApiError> {
        let (status, body, content_type) =
            read_openai_body(self.gw, self.ctx, resp, route, plan).await?;
        // Output guardrails see the answer before it is kept or sent.
        let body = match self.ctx.output_guard.clone() {
            Some(p) if plan.relayed.is_none() && status == 200 => {
                super::guarded::check_whole(self.gw, self.ctx, &p, body)
                    .await
                    .0
            }
            _ => body,
        };
        if let Some(door) = plan.relayed {
            (self.ctx.answer.usage, self.ctx.answer.tool_calls) = door.relay_usage(&body);
            // A Messages answer relayed from an Anthropic provider is kept in canonical form
            // (any door can then be served from it).
            if status == 200 && self.ctx.cache_key.is_some() && door == Door::Messages {
                let canonical = dialects::translate_response(
                    Dialect::Anthropic,
                    &body,
                    &route.upstream_model,
                    unix_now(),
                );
                if let Ok(c) = canonical {
                    super::cached::keep(self.gw, self.ctx, &c.body);
                }
            }
        } else {
            if super::needs_reasoning_state(plan.dialect) {
                if let Some(state) = filters::reasoning::TurnState::from_completion(&body) {
                    super::keep_reasoning_state(self.gw, self.ctx, &state);
                }
            }
            self.ctx.answer.usage = usage::from_response_body(&body);
            self.ctx.answer.tool_calls = usage::tool_calls_from_body(&body);
            if let Some(trace) = self.ctx.trace.as_mut() {
                self.ctx.answer.finish_reasons = filters::genai::finish_reasons(&body);
                self.ctx.answer.model = filters::genai::response_model(&body);
                if trace.capture_content {
                    if let Some(out) = filters::genai::output_messages(&body) {
                        trace.set("gen_ai.output.messages", out);
                    }
                }
            }
            if status == 200 {
                super::cached::keep(self.gw, self.ctx, &body);
            }
        }
        let body = door_body(self.ctx, plan, body)?;
        let mut map = respond::header_map(&content_type, self.ctx);
        gateway_headers(&mut map, self.ctx, route, plan);
        let h = respond::finish_header(status, map, self.ctx);
        if respond::full(self.session, self.ctx, h, body)
            .await
            .is_err()
        {
            self.ctx.answer.client_gone = true;
        }
        Ok(())
    }

    /// Streaming success: relay SSE events as they arrive, never buffering the response.
    pub(super) async fn relay_stream(
        &mut self,
        mut resp: UpstreamResponse,
        route: &Route,
        plan: &Plan,
    ) {
        let provider = route.provider.name.as_str();
        let mut out = ClientStream::new(door_encoder(self.ctx, route, plan));
        if !out
            .send_headers(self.gw, self.session, self.ctx, route, plan)
            .await
        {
            return;
        }
        let mut relay = stream_translator(self.gw, route, plan, false);
        let _active = ActiveStream::new(self.gw, provider);
        let mut clean = false;
        // A miss the cache may keep: the canonical stream is copied as it goes (bounded), and
        // folded into a whole answer once it ends cleanly.
        // A Messages stream relayed from an Anthropic provider is translated beside the relay
        // into the canonical stream the cache keeps.
        let mut fold =
            (self.ctx.cache_key.is_some() && plan.relayed == Some(Door::Messages)).then(|| {
                dialects::stream_translator(
                    Dialect::Anthropic,
                    &route.upstream_model,
                    unix_now(),
                    true,
                    self.gw.cfg.client.max_response_body_size,
                )
            });
        let mut kept = (self.ctx.cache_key.is_some() && (plan.relayed.is_none() || fold.is_some()))
            .then(BytesMut::new);
        let keep_limit = self.gw.cfg.cache.max_entry_bytes.saturating_mul(4);
        // A traced request: finish reasons and model read from the canonical chunks as they
        // pass; with content capture, the answer itself, folded when it ends.
        let mut facts = (self.ctx.trace.is_some() && plan.relayed.is_none())
            .then(filters::genai::StreamFacts::default);
        let mut captured = self
            .ctx
            .trace
            .as_ref()
            .filter(|t| t.capture_content && plan.relayed.is_none())
            .map(|_| BytesMut::new());
        // Output guardrails: text held back by a window and checked before it is written.
        let mut guard = self
            .ctx
            .output_guard
            .as_ref()
            .filter(|_| plan.relayed.is_none())
            .and_then(|p| {
                let set = p.output.clone()?;
                Some(filters::guard::StreamGuard::new(set, p.window))
            });
        loop {
            let waited = Instant::now();
            // Boxed, as the writes below: a stream's state lives as long as it does, and these
            // I/O futures would otherwise size it (issue 22: memory per idle stream).
            let next = Box::pin(unless_client_leaves(self.session, resp.read_chunk())).await;
            self.ctx.upstream.wait += waited.elapsed();
            // Client hung up: `resp` is dropped below, closing the upstream connection so
            // generation stops.
            let Some(next) = next else {
                self.ctx.client_left();
                break;
            };
            let mut end = feed_read(self.ctx, provider, relay.as_mut(), next, &mut out.buf);
            // What the upstream has already delivered goes out in the same write: one write for
            // a burst of events rather than one per read. Never waits (a read that would is
            // dropped before it takes anything), so no event is held back.
            while end.is_none() && out.buf.len() < COALESCE_BYTES {
                let Some(more) = resp.read_chunk().now_or_never() else {
                    break;
                };
                end = feed_read(self.ctx, provider, relay.as_mut(), more, &mut out.buf);
            }
            let mut last = end.is_some();
            if let Some(end) = end {
                clean = end == StreamEnd::Clean;
                if !clean {
                    self.ctx.answer.error = Some("upstream_stream_error");
                }
            }
            if let Some(g) = &mut guard {
                let input = out.buf.split();
                if g.feed(&input, &mut out.buf) == filters::guard::Verdict::Blocked {
                    // Ended here with content_filter: nothing more is read or kept.
                    last = true;
                    clean = false;
                    kept = None;
                    self.ctx.cache_key = None;
                    if let Some(m) = &self.gw.metrics {
                        m.guardrail_actions
                            .with_label_values(&["output_patterns", "block"])
                            .inc();
                    }
                }
            }
            if let Some(f) = &mut facts {
                f.observe(&out.buf);
            }
            if let Some(c) = &mut captured {
                if c.len() + out.buf.len() <= CAPTURE_LIMIT {
                    c.extend_from_slice(&out.buf);
                } else {
                    // Not a gap in the middle: no capture at all.
                    captured = None;
                }
            }
            if let Some(k) = &mut kept {
                if k.len() + out.buf.len() > keep_limit {
                    kept = None;
                } else if let Some(f) = &mut fold {
                    if f.feed(&out.buf, k).is_err() {
                        kept = None;
                    }
                } else {
                    k.extend_from_slice(&out.buf);
                }
            }
            if !out.flush(self.session, self.ctx, last).await || last {
                break;
            }
        }
        self.ctx.answer.generation = out.generation();
        if let Some(mut k) = kept.filter(|_| clean && !self.ctx.answer.client_gone) {
            if let Some(f) = &mut fold {
                f.finish(StreamEnd::Clean, &mut k);
            }
            let usage = relay.usage().and_then(|u| serde_json::to_value(u).ok());
            if let Some(body) = filters::cache::completion_from_stream(&k, usage) {
                super::cached::keep(self.gw, self.ctx, &body);
            }
        }
        if plan.relayed.is_some() && self.ctx.responses.is_some() {
            self.ctx.answer.document = relay.document().map(Bytes::from);
        }
        self.ctx.answer.usage = relay.usage().cloned();
        let stats = relay.stats();
        if super::needs_reasoning_state(plan.dialect) && plan.relayed.is_none() {
            super::keep_reasoning_state(self.gw, self.ctx, &stats.reasoning);
        }
        self.ctx.answer.tool_calls = stats.tool_calls.clone();
        if let Some(trace) = self.ctx.trace.as_mut() {
            if let Some(f) = facts {
                self.ctx.answer.finish_reasons = f.finish_reasons;
                self.ctx.answer.model = f.model;
            }
            let folded = captured.and_then(|c| filters::cache::completion_from_stream(&c, None));
            if let Some(out) = folded.and_then(|b| filters::genai::output_messages(&b)) {
                trace.set("gen_ai.output.messages", out);
            }
        }
        if self.ctx.answer.usage.is_none() {
            // The stream ended (disconnect, failure, or a provider without stream usage) before any
            // usage report: record an estimate rather than nothing (see README "Metrics").
            self.ctx.answer.estimated_usage = Some((
                usage::estimate_tokens(self.ctx.prompt_bytes.unwrap_or(self.ctx.bytes_in)),
                stats.estimated_completion_tokens(),
            ));
        }
        if clean && !self.ctx.answer.client_gone {
            Box::pin(self.gw.client.release(resp)).await;
        }
        // Otherwise `resp` is dropped here, closing the upstream connection.
    }

    /// The provider answered a later round (the stream already started) with an error status:
    /// relayed as an error event and the tail.
    pub(super) async fn error_event_from_upstream(
        &mut self,
        out: &mut ClientStream,
        plan: &Plan,
        mut resp: UpstreamResponse,
    ) {
        let status = resp.status();
        let Some(read) = unless_client_leaves(self.session, resp.read_all(64 * 1024)).await else {
            self.ctx.client_left();
            return;
        };
        self.gw.client.release(resp).await;
        let provider = self.ctx.upstream.provider.clone().unwrap_or_default();
        let env =
            dialects::translate_error(plan.dialect, status, &provider, &read.unwrap_or_default());
        self.ctx.answer.error = Some("upstream_error");
        filters::sse::encode_data(&env, &mut out.buf);
        out.buf.extend_from_slice(filters::sse::DONE);
        out.flush(self.session, self.ctx, true).await;
    }
}
