//! Writing gateway-originated responses to the client.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::errors::ApiError;
use crate::proxy::RequestCtx;

// The gateway's own header names, built at compile time (`from_static` in a function body
// checks every byte on every call).
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
const X_GATEWAY_CACHE: HeaderName = HeaderName::from_static("x-gateway-cache");
pub(crate) const X_GATEWAY_PROVIDER: HeaderName = HeaderName::from_static("x-gateway-provider");
pub(crate) const X_GATEWAY_MODEL: HeaderName = HeaderName::from_static("x-gateway-model");
pub(crate) const X_GATEWAY_DROPPED_PARAMS: HeaderName =
    HeaderName::from_static("x-gateway-dropped-params");
pub(crate) const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// A response header with the gateway's standard headers.
///
/// Built as a plain `HeaderMap` of typed names and converted once: Pingora's `insert_header`
/// turns every name into its case-preserving form and parses it back, allocating for each
/// custom one (issue 22: header building was the largest item of the gateway's own work per
/// request). Names go out title-cased for standard headers, lower-case otherwise, as before.
pub fn header(status: u16, content_type: &str, ctx: &RequestCtx) -> ResponseHeader {
    finish_header(status, header_map(content_type, ctx), ctx)
}

/// The gateway's standard headers as a map, for a caller adding its own before
/// [`finish_header`].
pub fn header_map(content_type: &str, ctx: &RequestCtx) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(12);
    if let Some(v) = known_value(content_type) {
        map.insert(http::header::CONTENT_TYPE, v);
    }
    if let Ok(id) = HeaderValue::from_str(&ctx.request_id) {
        if ctx.door == filters::doors::Door::Messages {
            // Where Anthropic's SDKs look for it (`request_id` on errors and messages).
            map.insert(REQUEST_ID, id.clone());
        }
        map.insert(X_REQUEST_ID, id);
    }
    if let Some(r) = &ctx.caller.rate_headers {
        rate_headers(&mut map, r);
    }
    if let Some(c) = ctx.cache {
        map.insert(X_GATEWAY_CACHE, HeaderValue::from_static(c.as_str()));
    }
    map
}

/// The response header of `status` with `map`'s headers.
pub fn finish_header(status: u16, map: HeaderMap, ctx: &RequestCtx) -> ResponseHeader {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = http::StatusCode::from_u16(status).expect("valid status");
    parts.headers = map;
    let mut h = ResponseHeader::from(parts);
    if ctx.route == "/ui" {
        // Every answer under /ui (errors too) carries the UI's policy.
        crate::ui::guard(&mut h);
    }
    h
}

/// A header value, without a copy for the content types the gateway itself answers with.
fn known_value(s: &str) -> Option<HeaderValue> {
    match s {
        "application/json" => Some(HeaderValue::from_static("application/json")),
        "text/event-stream" => Some(HeaderValue::from_static("text/event-stream")),
        _ => HeaderValue::from_str(s).ok(),
    }
}

/// OpenAI's `x-ratelimit-*` headers.
fn rate_headers(map: &mut HeaderMap, r: &crate::limits::RateHeaders) {
    // Names built at compile time (`from_static` outside a constant checks every byte per call).
    const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
    const REMAINING_REQUESTS: HeaderName =
        HeaderName::from_static("x-ratelimit-remaining-requests");
    const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
    const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
    const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
    const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
    // "<seconds>s", without `format!`.
    let mut b = itoa::Buffer::new();
    let digits = b.format(r.reset).as_bytes();
    let mut reset = [0u8; 21];
    reset[..digits.len()].copy_from_slice(digits);
    reset[digits.len()] = b's';
    let reset = HeaderValue::from_bytes(&reset[..=digits.len()]).expect("digits and s");
    if let Some(l) = r.limit_requests {
        map.insert(LIMIT_REQUESTS, l.into());
        map.insert(REMAINING_REQUESTS, r.remaining_requests.into());
        map.insert(RESET_REQUESTS, reset.clone());
    }
    if let Some(l) = r.limit_tokens {
        map.insert(LIMIT_TOKENS, l.into());
        map.insert(REMAINING_TOKENS, r.remaining_tokens.into());
        map.insert(RESET_TOKENS, reset);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_headers_carry_limits_remaining_and_reset() {
        let mut map = HeaderMap::new();
        rate_headers(
            &mut map,
            &crate::limits::RateHeaders {
                limit_requests: Some(100),
                remaining_requests: 99,
                limit_tokens: None,
                remaining_tokens: 0,
                reset: 60,
            },
        );
        let get = |n: &str| map.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(get("x-ratelimit-limit-requests").as_deref(), Some("100"));
        assert_eq!(get("x-ratelimit-remaining-requests").as_deref(), Some("99"));
        assert_eq!(get("x-ratelimit-reset-requests").as_deref(), Some("60s"));
        // No token limit: no token headers.
        assert_eq!(map.len(), 3);
        let mut map = HeaderMap::new();
        rate_headers(
            &mut map,
            &crate::limits::RateHeaders {
                limit_requests: None,
                remaining_requests: 0,
                limit_tokens: Some(5),
                remaining_tokens: 0,
                reset: 7,
            },
        );
        assert_eq!(map.get("x-ratelimit-reset-tokens").unwrap(), "7s");
        assert_eq!(map.get("x-ratelimit-remaining-tokens").unwrap(), "0");
    }
}
