//! Front doors: the client APIs the gateway serves. A door reads the client's request, decodes
//! it into the canonical exchange (`exchange::Inbound`: a Chat Completions body) and hands it to
//! `exchange::run`; the answer comes back through the door's encoder, chosen by the record's
//! `door` (pure code in `filters::doors`). The door comes first on the request path: it calls
//! the exchange, never the other way round.
//!
//! Adding a door: a decoder and encoders in `filters::doors::<api>` (golden tests for each
//! dialect), a `Door` variant, its routes in `proxy::request_filter`, and its decode arm here.

use bytes::Bytes;
use filters::doors::{messages, Door};
use http::HeaderName;
use pingora::proxy::Session;

use crate::errors::{ApiError, Code};
use crate::exchange::{self, Endpoint, Inbound, OriginalRequest};
use crate::proxy::{body, respond, Gateway, RequestCtx};

/// Headers of the Messages API that a relay forwards to an Anthropic provider.
const MESSAGES_HEADERS: [&str; 2] = ["anthropic-version", "anthropic-beta"];

/// Serves one request that came in through `ctx.door` for `ep`.
pub async fn handle(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx, ep: Endpoint) {
    if let Err(err) = serve(gw, session, ctx, ep).await {
        respond::error(session, ctx, &err).await;
    }
}

async fn serve(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    ep: Endpoint,
) -> Result<(), ApiError> {
    let raw = read_body(gw, session, ctx).await?;
    let inbound = match ctx.door {
        Door::Chat => Inbound {
            body: raw,
            default_provider: None,
            estimate: None,
        },
        Door::Messages => decode_messages(gw, session, ctx, ep, raw)?,
        Door::Responses => Box::pin(crate::responses::decode(gw, ctx, raw)).await?,
    };
    exchange::run(gw, session, ctx, ep, inbound).await?;
    if ctx.door == Door::Responses {
        Box::pin(crate::responses::keep(gw, ctx)).await;
    }
    Ok(())
}

/// The whole body within `server.body_timeout` (a client trickling one byte per read timeout
/// cannot hold a buffer, and a worker's attention, for ever) and `server.max_request_body_size`.
async fn read_body(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Bytes, ApiError> {
    let limit = gw.cfg.server.body_timeout.get();
    let raw = tokio::time::timeout(
        limit,
        body::read_limited(session, gw.cfg.server.max_request_body_size),
    )
    .await
    .map_err(|_| {
        session.set_keepalive(None);
        ApiError::of(
            Code::BodyTimeout,
            format!("Timed out reading the request body (server.body_timeout = {limit:?})"),
        )
    })??;
    ctx.bytes_in = raw.len();
    if ctx.log_bodies {
        ctx.logged_body = Some(crate::request_log::body_text(&raw));
    }
    if gw.cfg.environment == crate::config::Environment::Development {
        // Development only: production never logs bodies.
        let end = raw.len().min(1024);
        ctx.body_sample = Some(String::from_utf8_lossy(&raw[..end]).into_owned());
    }
    Ok(raw)
}

/// A Messages request: the canonical request, with the original kept for an Anthropic
/// provider. Bare model names (Claude Code's) go to `doors.messages.default_provider`.
fn decode_messages(
    gw: &Gateway,
    session: &Session,
    ctx: &mut RequestCtx,
    ep: Endpoint,
    raw: Bytes,
) -> Result<Inbound, ApiError> {
    let invalid = |e: filters::doors::DecodeError| {
        let mut err = ApiError::of(Code::InvalidRequest, e.message);
        err.param = e.param;
        err
    };
    let h = &session.req_header().headers;
    let headers = MESSAGES_HEADERS
        .iter()
        .filter_map(|n| Some((HeaderName::from_static(n), h.get(*n)?.clone())))
        .collect();
    let default_provider =
        Some(gw.cfg.doors.messages.default_provider.clone()).filter(|p| !p.is_empty());
    let (body, dropped, estimate) = if ep == Endpoint::CountTokens {
        // Routed on its model like a message; the estimate answers where nobody can count.
        let n = messages::estimate_input_tokens(&raw).map_err(invalid)?;
        (raw.clone(), Vec::new(), Some(n))
    } else {
        let decoded = messages::decode_request(&raw).map_err(invalid)?;
        let body = serde_json::to_vec(&decoded.chat).expect("request serializes");
        (Bytes::from(body), decoded.dropped, None)
    };
    ctx.original = Some(Box::new(OriginalRequest {
        body: raw,
        dropped,
        headers,
        relay: true,
        hosted_tools: Vec::new(),
        native_only: Vec::new(),
        previous_upstream: false,
        relay_thin: None,
    }));
    Ok(Inbound {
        body,
        default_provider,
        estimate,
    })
}
