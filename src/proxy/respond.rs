//! Writing gateway-originated responses to the client.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::errors::ApiError;
use crate::proxy::RequestCtx;

/// A response header with the gateway's standard headers.
pub fn header(status: u16, content_type: &str, ctx: &RequestCtx) -> ResponseHeader {
    let mut h = ResponseHeader::build(status, Some(6)).expect("valid status");
    let _ = h.insert_header(http::header::CONTENT_TYPE, content_type);
    let _ = h.insert_header("x-request-id", ctx.request_id.as_str());
    if ctx.door == filters::doors::Door::Messages {
        // Where Anthropic's SDKs look for it (`request_id` on errors and messages).
        let _ = h.insert_header("request-id", ctx.request_id.as_str());
    }
    if let Some(r) = &ctx.caller.rate_headers {
        rate_headers(&mut h, r);
    }
    if let Some(c) = ctx.cache {
        let _ = h.insert_header("x-gateway-cache", c.as_str());
    }
    if ctx.route == "/ui" {
        // Every answer under /ui (errors too) carries the UI's policy.
        crate::ui::guard(&mut h);
    }
    h
}

/// OpenAI's `x-ratelimit-*` headers.
fn rate_headers(h: &mut ResponseHeader, r: &crate::limits::RateHeaders) {
    let reset = format!("{}s", r.reset);
    if let Some(l) = r.limit_requests {
        let _ = h.insert_header("x-ratelimit-limit-requests", l);
        let _ = h.insert_header("x-ratelimit-remaining-requests", r.remaining_requests);
        let _ = h.insert_header("x-ratelimit-reset-requests", reset.as_str());
    }
    if let Some(l) = r.limit_tokens {
        let _ = h.insert_header("x-ratelimit-limit-tokens", l);
        let _ = h.insert_header("x-ratelimit-remaining-tokens", r.remaining_tokens);
        let _ = h.insert_header("x-ratelimit-reset-tokens", reset.as_str());
    }
}

/// Writes a complete response with a body of known length. Errors mean the client is gone.
pub async fn full(
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut h: ResponseHeader,
    body: Bytes,
) -> pingora::Result<()> {
    let _ = h.insert_header(http::header::CONTENT_LENGTH, body.len());
    ctx.answer.status = h.status.as_u16();
    ctx.answer.bytes_out = body.len();
    if ctx.log_bodies {
        ctx.answer.logged_body = Some(crate::request_log::body_text(&body));
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await
}

pub async fn json(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    body: Bytes,
) -> pingora::Result<()> {
    let h = header(status, "application/json", ctx);
    full(session, ctx, h, body).await
}

/// Writes an error in the door's envelope (OpenAI's, or Anthropic's on `/v1/messages`; always
/// `application/json`, even for stream requests).
pub async fn error(session: &mut Session, ctx: &mut RequestCtx, err: &ApiError) {
    ctx.answer.error = Some(err.code.unwrap_or("error"));
    if err.status == 413 || err.status == 408 || err.status == 400 && !session.is_body_done() {
        // The unread rest of the request body would be parsed as the next request.
        session.set_keepalive(None);
    }
    let (status, body) = match ctx.door.encode_error(err.status, &err.body()) {
        Some((status, body)) => (status, bytes::Bytes::from(body)),
        None => (err.status, err.body()),
    };
    let mut h = header(status, "application/json", ctx);
    if let Some(d) = err.retry_after {
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        let _ = h.insert_header(http::header::RETRY_AFTER, secs.max(1));
    }
    if let Err(e) = full(session, ctx, h, body).await {
        log::debug!("client gone while sending error: {e}");
    }
}
