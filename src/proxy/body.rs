//! Reading a client request body with a size limit.

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

use crate::errors::{ApiError, Code};

fn too_large(limit: usize) -> ApiError {
    ApiError::of(
        Code::RequestTooLarge,
        format!("Request body is larger than the maximum of {limit} bytes"),
    )
}

/// Rejects early when `Content-Length` already exceeds `limit`.
pub fn check_declared_length(session: &Session, limit: usize) -> Result<(), ApiError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    match declared {
        Some(n) if n > limit => Err(too_large(limit)),
        _ => Ok(()),
    }
}

/// Reads the whole body, failing with 413 past `limit` and 408 when the client stalls.
pub async fn read_limited(session: &mut Session, limit: usize) -> Result<Bytes, ApiError> {
    check_declared_length(session, limit)?;
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        let chunk = match session.read_request_body().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                let timed_out = matches!(e.etype(), pingora::ErrorType::ReadTimedout);
                return Err(if timed_out {
                    ApiError::of(Code::BodyTimeout, "Timed out reading the request body")
                } else {
                    ApiError::of(
                        Code::InvalidBody,
                        format!("Could not read the request body: {}", e.etype().as_str()),
                    )
                });
            }
        };
        // One chunk (the common case for small bodies) is kept without copying.
        if first.is_none() && buf.is_empty() {
            if chunk.len() > limit {
                return Err(too_large(limit));
            }
            first = Some(chunk);
            continue;
        }
        if let Some(f) = first.take() {
            let hint = session
                .req_header()
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                .unwrap_or(f.len() * 2)
                .min(limit);
            buf.reserve(hint);
            buf.extend_from_slice(&f);
        }
        if buf.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}
