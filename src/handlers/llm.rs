//! `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`: read the body, route on its model,
//! rewrite the few fields the gateway owns, call the provider, relay the answer.

use bytes::{Bytes, BytesMut};
use filters::json_object::{ParseError, RawObject};
use filters::stream_relay::{OpenAiStreamRelay, StreamEnd};
use filters::usage;
use http::{HeaderName, HeaderValue, Method};
use pingora::proxy::Session;
use serde_json::{Map, Value};

use crate::errors::{self, ApiError};
use crate::proxy::{body, respond, Gateway, RequestCtx};
use crate::routing::Route;
use crate::upstream::{UpstreamError, UpstreamRequest, UpstreamResponse};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    fn streams(self) -> bool {
        self != Endpoint::Embeddings
    }
}

/// What the rewrite decided about the response.
struct Prepared {
    body: Bytes,
    stream: bool,
    /// The gateway added `include_usage`; hide the usage-only chunk from the client.
    strip_usage_chunk: bool,
}

pub async fn handle(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx, ep: Endpoint) {
    if let Err(err) = run(gw, session, ctx, ep).await {
        respond::error(session, ctx, &err).await;
    }
}

/// Returns `Err` only while nothing has been written to the client.
async fn run(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    ep: Endpoint,
) -> Result<(), ApiError> {
    let raw = body::read_limited(session, gw.cfg.server.max_request_body_size).await?;
    let mut obj = RawObject::parse(&raw).map_err(|e| match e {
        ParseError::NotAnObject => ApiError::bad_request(e.to_string()).code("invalid_json"),
        ParseError::Syntax(m) => ApiError::bad_request(format!(
            "We could not parse the JSON body of your request: {m}"
        ))
        .code("invalid_json"),
    })?;
    let model: String = obj
        .get_as("model")
        .map_err(|_| ApiError::bad_request("model must be a string").param("model"))?
        .filter(|m: &String| !m.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("you must provide a model parameter")
                .param("model")
                .code("missing_model")
        })?;
    ctx.model = Some(model.clone());

    let provider_param = query_param(session, "provider");
    let route = gw.router.route(&model, provider_param.as_deref())?;
    let provider = route.provider.clone();
    ctx.provider = Some(provider.name.clone());
    if provider.missing_key() {
        return Err(ApiError::bad_request(format!(
            "Provider {} has no API key configured (set {}_API_KEY)",
            provider.name,
            crate::config::providers::env_prefix(&provider.name)
        ))
        .code("provider_not_configured"));
    }

    let prepared = prepare(&mut obj, &route, ep)?;
    drop(obj);

    let path = match ep {
        Endpoint::Chat => &provider.chat_path,
        Endpoint::Completions => &provider.completions_path,
        Endpoint::Embeddings => &provider.embeddings_path,
    };
    let path = provider.path_and_query(path, None);
    let accept = if prepared.stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let headers = [
        (
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ),
        (http::header::ACCEPT, HeaderValue::from_static(accept)),
        // The gateway reads responses (usage, SSE events), so ask for them uncompressed.
        (
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        ),
        (
            http::header::USER_AGENT,
            HeaderValue::from_static(concat!("inference-gateway/", env!("CARGO_PKG_VERSION"))),
        ),
    ];
    let req = UpstreamRequest {
        method: Method::POST,
        path: &path,
        headers: &headers,
        body: prepared.body,
        request_id: &ctx.request_id,
    };

    // Wait for the upstream while watching the client: if it hangs up, the upstream call is
    // dropped (its connection closed) instead of generating tokens nobody reads.
    let sent = tokio::select! {
        r = gw.client.send(&provider, &req) => r,
        _ = session.as_downstream_mut().read_body_or_idle(true) => {
            ctx.client_gone = true;
            ctx.error = Some("client_disconnected");
            return Ok(());
        }
    };
    let resp =
        sent.map_err(|e| ApiError::new(e.status(), e.message(&provider.name)).code(e.code()))?;

    ctx.upstream_addr = Some(resp.addr);
    let status = resp.status();
    if !(200..300).contains(&status) {
        return relay_error(gw, session, ctx, &provider.name, resp).await;
    }
    if prepared.stream && resp.is_event_stream() {
        relay_stream(gw, session, ctx, resp, &route, prepared.strip_usage_chunk).await;
        return Ok(());
    }
    relay_whole(gw, session, ctx, resp, &route).await
}

fn query_param(session: &Session, name: &str) -> Option<String> {
    let q = session.req_header().uri.query()?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name && !v.is_empty()).then(|| v.to_string())
    })
}

/// Rewrites the request body for the upstream: the routed model name, alias defaults and system
/// prompt prefix, and `stream_options.include_usage` so usage is never missing from a stream.
fn prepare(obj: &mut RawObject<'_>, route: &Route<'_>, ep: Endpoint) -> Result<Prepared, ApiError> {
    obj.set("model", &route.upstream_model);
    if let Some(alias) = route.alias {
        for (k, v) in &alias.defaults {
            if !obj.contains(k) {
                obj.set(k, v);
            }
        }
        if let (Some(prefix), Endpoint::Chat) = (&alias.system_prompt_prefix, ep) {
            let messages = prefix_system_prompt(obj, prefix)?;
            obj.set("messages", &messages);
        }
    }
    let stream = if ep.streams() {
        obj.get_as::<bool>("stream")
            .map_err(|_| ApiError::bad_request("stream must be a boolean").param("stream"))?
            .unwrap_or(false)
    } else {
        false
    };
    let mut strip_usage_chunk = false;
    if stream {
        let mut opts: Map<String, Value> = obj
            .get_as("stream_options")
            .map_err(|_| {
                ApiError::bad_request("stream_options must be an object").param("stream_options")
            })?
            .unwrap_or_default();
        if opts.get("include_usage") != Some(&Value::Bool(true)) {
            opts.insert("include_usage".into(), Value::Bool(true));
            obj.set("stream_options", &opts);
            strip_usage_chunk = true;
        }
    }
    Ok(Prepared {
        body: Bytes::from(obj.to_vec()),
        stream,
        strip_usage_chunk,
    })
}

/// Puts `prefix` before the first system message's text, or adds a system message.
fn prefix_system_prompt(obj: &RawObject<'_>, prefix: &str) -> Result<Vec<Value>, ApiError> {
    let mut messages: Vec<Value> = obj
        .get_as("messages")
        .map_err(|_| ApiError::bad_request("messages must be an array").param("messages"))?
        .unwrap_or_default();
    let first_system = messages.first_mut().filter(|m| {
        matches!(
            m.get("role").and_then(Value::as_str),
            Some("system" | "developer")
        )
    });
    match first_system.and_then(|m| m.get_mut("content")) {
        Some(Value::String(s)) => *s = format!("{prefix}\n\n{s}"),
        Some(Value::Array(parts)) => {
            parts.insert(0, serde_json::json!({"type": "text", "text": prefix}))
        }
        _ => messages.insert(0, serde_json::json!({"role": "system", "content": prefix})),
    }
    Ok(messages)
}

/// Upstream answered with an error status: pass the status through, in OpenAI's envelope.
async fn relay_error(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    provider: &str,
    mut resp: UpstreamResponse,
) -> Result<(), ApiError> {
    let status = resp.status();
    let limit = gw.cfg.client.max_response_body_size.min(1 << 20);
    let body = match resp.read_all(limit).await {
        Ok(b) => b,
        Err(UpstreamError::TooLarge) => Bytes::new(),
        Err(e) => return Err(ApiError::new(e.status(), e.message(provider)).code(e.code())),
    };
    let mut h = respond::header(status, "application/json", ctx);
    for (k, v) in resp.header().headers.iter() {
        let n = k.as_str();
        if n == "retry-after" || n.starts_with("x-ratelimit-") {
            let _ = h.insert_header(k.clone(), v.clone());
        }
    }
    gw.client.release(resp).await;
    ctx.error = Some("upstream_error");
    let body = errors::wrap_upstream_error(status, provider, &body);
    let _ = respond::full(session, ctx, h, body).await;
    Ok(())
}

fn gateway_headers(h: &mut pingora::http::ResponseHeader, route: &Route<'_>) {
    let _ = h.insert_header("x-gateway-provider", route.provider.name.as_str());
    if let Ok(v) = HeaderValue::from_str(&route.upstream_model) {
        let _ = h.insert_header(HeaderName::from_static("x-gateway-model"), v);
    }
}

/// Non-streaming success: relay the body byte-for-byte and record its usage.
async fn relay_whole(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut resp: UpstreamResponse,
    route: &Route<'_>,
) -> Result<(), ApiError> {
    let provider = &route.provider.name;
    let body = resp
        .read_all(gw.cfg.client.max_response_body_size)
        .await
        .map_err(|e| ApiError::new(e.status(), e.message(provider)).code(e.code()))?;
    if let Some(u) = usage::from_response_body(&body) {
        ctx.prompt_tokens = Some(u.prompt_tokens);
        ctx.completion_tokens = Some(u.completion_tokens);
    }
    let content_type = resp
        .header_str("content-type")
        .unwrap_or("application/json")
        .to_string();
    let status = resp.status();
    gw.client.release(resp).await;
    let mut h = respond::header(status, &content_type, ctx);
    gateway_headers(&mut h, route);
    if respond::full(session, ctx, h, body).await.is_err() {
        ctx.client_gone = true;
    }
    Ok(())
}

/// Streaming success: relay SSE events as they arrive, never buffering the response.
async fn relay_stream(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut resp: UpstreamResponse,
    route: &Route<'_>,
    strip_usage_chunk: bool,
) {
    let provider = route.provider.name.as_str();
    let mut h = respond::header(200, "text/event-stream", ctx);
    let _ = h.insert_header(http::header::CACHE_CONTROL, "no-cache");
    let _ = h.insert_header("x-accel-buffering", "no");
    gateway_headers(&mut h, route);
    if !session.is_http2() {
        let _ = h.insert_header(http::header::TRANSFER_ENCODING, "chunked");
    }
    ctx.status = 200;
    if session
        .write_response_header(Box::new(h), false)
        .await
        .is_err()
    {
        ctx.client_gone = true;
        return;
    }
    let mut relay = OpenAiStreamRelay::new(strip_usage_chunk, gw.cfg.client.max_response_body_size);
    let mut out = BytesMut::with_capacity(4096);
    let mut clean = false;
    loop {
        let next = tokio::select! {
            r = resp.read_chunk() => r,
            _ = session.as_downstream_mut().read_body_or_idle(true) => {
                // Client hung up: drop the upstream connection so generation stops.
                ctx.client_gone = true;
                break;
            }
        };
        let end = match next {
            Ok(Some(chunk)) => match relay.feed(&chunk, &mut out) {
                Ok(()) => None,
                Err(_) => Some(StreamEnd::Failed {
                    message: format!("provider {provider} sent an oversized stream event"),
                    code: "upstream_stream_error",
                }),
            },
            Ok(None) => Some(StreamEnd::Clean),
            Err(e) => Some(StreamEnd::Failed {
                message: e.message(provider),
                code: e.code(),
            }),
        };
        let last = end.is_some();
        if let Some(end) = end {
            clean = end == StreamEnd::Clean;
            if !clean {
                ctx.error = Some("upstream_stream_error");
            }
            relay.finish(end, &mut out);
        }
        if !out.is_empty() || last {
            let data = out.split().freeze();
            ctx.bytes_out += data.len();
            if session.write_response_body(Some(data), last).await.is_err() {
                ctx.client_gone = true;
                break;
            }
        }
        if last {
            break;
        }
    }
    if let Some(u) = relay.usage() {
        ctx.prompt_tokens = Some(u.prompt_tokens);
        ctx.completion_tokens = Some(u.completion_tokens);
    }
    if ctx.client_gone {
        ctx.error = Some("client_disconnected");
        session.set_keepalive(None);
    }
    if clean && !ctx.client_gone {
        gw.client.release(resp).await;
    }
    // Otherwise `resp` is dropped here, closing the upstream connection.
}
