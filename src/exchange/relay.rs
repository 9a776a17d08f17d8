//! The answer to the client: an upstream error relayed in the door's envelope, a whole body
//! (translated from the dialect, encoded for the door), or a stream relayed event by event
//! through the dialect's translator and the client writer.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use filters::dialects::{self, Dialect, StreamTranslator};
use filters::stream_relay::{OpenAiStreamRelay, StreamEnd};
use filters::usage;
use pingora::proxy::Session;

use super::client::{gateway_headers, unless_client_leaves, ActiveStream, ClientStream};
use super::plan::Plan;
use super::unix_now;
use crate::errors::{ApiError, Code};
use crate::proxy::{respond, Gateway, RequestCtx};
use crate::routing::Route;
use crate::upstream::{UpstreamError, UpstreamResponse};

/// Upstream answered with an error status: pass the status through, in OpenAI's envelope.
pub(super) async fn relay_error(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    provider: &str,
    dialect: Dialect,
    mut resp: UpstreamResponse,
) -> Result<(), ApiError> {
    let status = resp.status();
    let limit = gw.cfg.client.max_response_body_size.min(1 << 20);
    let waited = Instant::now();
    let read = resp.read_all(limit).await;
    ctx.upstream.wait += waited.elapsed();
    let body = match read {
        Ok(b) => b,
        Err(UpstreamError::TooLarge) => Bytes::new(),
        Err(e) => return Err(ApiError::upstream(&e, provider)),
    };
    let mut h = respond::header(status, "application/json", ctx);
    for (k, v) in resp.header().headers.iter() {
        let n = k.as_str();
        // A key's own x-ratelimit-* (set by `respond::header`) are not replaced by the
        // provider account's.
        if n == "retry-after"
            || (n.starts_with("x-ratelimit-") && ctx.caller.rate_headers.is_none())
        {
            let _ = h.insert_header(k.clone(), v.clone());
        }
    }
    gw.client.release(resp).await;
    ctx.answer.error = Some("upstream_error");
    // OpenAI-style bodies pass unchanged; native and non-JSON ones are mapped to the envelope,
    // then to the door's.
    let body = Bytes::from(dialects::translate_error(dialect, status, provider, &body));
    let body = match ctx.door.encode_error(status, &body) {
        Some((door_status, b)) => {
            if door_status != status {
                h.set_status(door_status).expect("valid status");
            }
            Bytes::from(b)
        }
        None => body,
    };
    let _ = respond::full(session, ctx, h, body).await;
    Ok(())
}

/// Non-streaming success: relay the body byte-for-byte (OpenAI dialect) or translated, and
/// record its usage.
pub(super) async fn relay_whole(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    resp: UpstreamResponse,
    route: &Route<'_>,
    plan: &Plan,
) -> Result<(), ApiError> {
    let (status, body, content_type) = read_openai_body(gw, ctx, resp, route, plan).await?;
    if plan.passthrough {
        ctx.answer.usage = filters::doors::messages::usage_of_message(&body);
        ctx.answer.tool_calls = filters::doors::messages::tool_calls_of_message(&body);
    } else {
        if super::needs_reasoning_state(plan.dialect) {
            if let Some(state) = filters::reasoning::TurnState::from_completion(&body) {
                super::keep_reasoning_state(gw, ctx, &state);
            }
        }
        ctx.answer.usage = usage::from_response_body(&body);
        ctx.answer.tool_calls = usage::tool_calls_from_body(&body);
    }
    let body = door_body(ctx, plan, body)?;
    let mut h = respond::header(status, &content_type, ctx);
    gateway_headers(&mut h, ctx, route, plan);
    if respond::full(session, ctx, h, body).await.is_err() {
        ctx.answer.client_gone = true;
    }
    Ok(())
}

/// Reads a whole successful response and returns it as an OpenAI body (translated from the
/// provider's native format when needed): `(status, body, content type)`.
pub(super) async fn read_openai_body(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    mut resp: UpstreamResponse,
    route: &Route<'_>,
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
    if plan.passthrough {
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
    route: &Route<'_>,
    plan: &Plan,
    loop_round: bool,
) -> Box<dyn StreamTranslator> {
    let max_event = gw.cfg.client.max_response_body_size;
    if plan.passthrough {
        return Box::new(filters::doors::messages::PassthroughObserver::new(
            max_event,
        ));
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
        Ok(Some(chunk)) => match translator.feed(&chunk, out) {
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

/// Streaming success: relay SSE events as they arrive, never buffering the response.
pub(super) async fn relay_stream(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut resp: UpstreamResponse,
    route: &Route<'_>,
    plan: &Plan,
) {
    let provider = route.provider.name.as_str();
    let mut out = ClientStream::new(door_encoder(ctx, route, plan));
    if !out.send_headers(gw, session, ctx, route, plan).await {
        return;
    }
    let mut relay = stream_translator(gw, route, plan, false);
    let _active = ActiveStream::new(gw, provider);
    let mut clean = false;
    loop {
        let waited = Instant::now();
        let next = unless_client_leaves(session, resp.read_chunk()).await;
        ctx.upstream.wait += waited.elapsed();
        // Client hung up: `resp` is dropped below, closing the upstream connection so
        // generation stops.
        let Some(next) = next else {
            ctx.client_left();
            break;
        };
        let end = feed_read(ctx, provider, relay.as_mut(), next, &mut out.buf);
        let last = end.is_some();
        if let Some(end) = end {
            clean = end == StreamEnd::Clean;
            if !clean {
                ctx.answer.error = Some("upstream_stream_error");
            }
        }
        if !out.flush(session, ctx, last).await || last {
            break;
        }
    }
    ctx.answer.generation = out.generation();
    ctx.answer.usage = relay.usage().cloned();
    let stats = relay.stats();
    if super::needs_reasoning_state(plan.dialect) && !plan.passthrough {
        super::keep_reasoning_state(gw, ctx, &stats.reasoning);
    }
    ctx.answer.tool_calls = stats.tool_calls.clone();
    if ctx.answer.usage.is_none() {
        // The stream ended (disconnect, failure, or a provider without stream usage) before any
        // usage report: record an estimate rather than nothing (see README "Metrics").
        ctx.answer.estimated_usage = Some((
            usage::estimate_tokens(ctx.bytes_in),
            stats.estimated_completion_tokens(),
        ));
    }
    if clean && !ctx.answer.client_gone {
        gw.client.release(resp).await;
    }
    // Otherwise `resp` is dropped here, closing the upstream connection.
}

/// The door's stream encoder, unless the answer is relayed in the door's own API.
pub(super) fn door_encoder(
    ctx: &RequestCtx,
    route: &Route<'_>,
    plan: &Plan,
) -> Option<Box<dyn filters::doors::StreamEncoder>> {
    if plan.passthrough {
        return None;
    }
    ctx.door.stream_encoder(&route.upstream_model)
}

/// A canonical body in the door's API (unchanged when relayed or when the door is canonical).
pub(super) fn door_body(ctx: &RequestCtx, plan: &Plan, body: Bytes) -> Result<Bytes, ApiError> {
    if plan.passthrough {
        return Ok(body);
    }
    match ctx.door.encode_response(&body) {
        None => Ok(body),
        Some(Ok(b)) => Ok(Bytes::from(b)),
        Some(Err(e)) => Err(ApiError::of(
            Code::UpstreamInvalidResponse,
            format!(
                "the provider's answer cannot be given in the client's API: {}",
                e.message
            ),
        )),
    }
}

/// The provider answered a later round (the stream already started) with an error status:
/// relayed as an error event and the tail.
pub(super) async fn error_event_from_upstream(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    out: &mut ClientStream,
    plan: &Plan,
    mut resp: UpstreamResponse,
) {
    let status = resp.status();
    let Some(read) = unless_client_leaves(session, resp.read_all(64 * 1024)).await else {
        ctx.client_left();
        return;
    };
    gw.client.release(resp).await;
    let provider = ctx.upstream.provider.clone().unwrap_or_default();
    let env = dialects::translate_error(plan.dialect, status, &provider, &read.unwrap_or_default());
    ctx.answer.error = Some("upstream_error");
    filters::sse::encode_data(&env, &mut out.buf);
    out.buf.extend_from_slice(filters::sse::DONE);
    out.flush(session, ctx, true).await;
}
