//! The door side of the request path: the client's API decoded into the canonical exchange on
//! the way in (`decode`), the canonical answer encoded back on the way out (`encode_body`,
//! `stream_encoder`, `error_body`). Pure translation lives in `filters::doors`; this module
//! only decides which one applies.
//!
//! When the door's API is the serving provider's own (Messages to an Anthropic provider) the
//! request is relayed with only its model rewritten (`plan_passthrough`): thinking, signatures,
//! `cache_control`, citations, betas and fields the gateway has never heard of pass untouched.

use bytes::Bytes;
use filters::dialects::Dialect;
use filters::doors::{self, messages, Door, StreamEncoder};
use filters::json_object::RawObject;
use http::{HeaderName, HeaderValue};
use pingora::proxy::Session;
use serde_json::Value;

use super::llm::{Endpoint, Plan};
use crate::errors::ApiError;
use crate::proxy::{Gateway, RequestCtx};
use crate::routing::Route;

/// What a non-canonical door keeps of the client's request.
pub struct DoorRequest {
    /// The request as the client sent it, for a provider that speaks the door's API.
    pub native_body: Bytes,
    /// What the canonical request could not carry (`x-gateway-dropped-params` when translated).
    pub dropped: Vec<String>,
    /// The client's API headers to forward on a relay (`anthropic-version`, `anthropic-beta`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// A provider of the door's API gets the request as sent (off in the MCP loop, which works
    /// on the canonical exchange).
    pub relay: bool,
}

/// Headers of the Messages API that a relay forwards to an Anthropic provider.
const MESSAGES_HEADERS: [&str; 2] = ["anthropic-version", "anthropic-beta"];

/// Decodes a door's request body into the canonical one; the canonical door's body is returned
/// as it is.
pub fn decode(session: &Session, ctx: &mut RequestCtx, raw: Bytes) -> Result<Bytes, ApiError> {
    match ctx.door {
        Door::Chat => Ok(raw),
        Door::Messages => {
            let decoded = messages::decode_request(&raw).map_err(|e| {
                let mut err = ApiError::bad_request(e.message).code("invalid_request");
                err.param = e.param;
                err
            })?;
            let h = &session.req_header().headers;
            let headers = MESSAGES_HEADERS
                .iter()
                .filter_map(|n| {
                    let v = h.get(*n)?;
                    Some((HeaderName::from_static(n), v.clone()))
                })
                .collect();
            ctx.door_request = Some(Box::new(DoorRequest {
                native_body: raw,
                dropped: decoded.dropped,
                headers,
                relay: true,
            }));
            let body = serde_json::to_vec(&decoded.chat).expect("request serializes");
            Ok(Bytes::from(body))
        }
    }
}

/// The `?provider=` a door implies: Anthropic's SDKs (Claude Code among them) send bare Claude
/// model names, which on the Messages door go to `doors.messages.default_provider` unless they
/// name an alias or a `provider/` prefix.
pub fn default_provider<'g>(gw: &'g Gateway, ctx: &RequestCtx, model: &str) -> Option<&'g str> {
    if ctx.door != Door::Messages || gw.router.resolves(model) {
        return None;
    }
    Some(gw.cfg.doors.messages.default_provider.as_str()).filter(|p| !p.is_empty())
}

/// The relay of a Messages request to an Anthropic provider: the client's body with the routed
/// model, an alias's defaults and system prefix in Messages terms, the client's
/// `anthropic-version` / `anthropic-beta`.
pub(super) fn plan_passthrough(
    req: &DoorRequest,
    route: &Route<'_>,
    ep: Endpoint,
) -> Result<Plan, ApiError> {
    let provider = &route.provider;
    let mut obj = RawObject::parse(&req.native_body)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON: {e}")).code("invalid_json"))?;
    obj.set("model", &route.upstream_model);
    if let Some(alias) = route.alias {
        for (k, v) in &alias.defaults {
            // Chat Completions names to Messages names; what Messages cannot take is left out.
            let key = match k.as_str() {
                "max_tokens" | "max_completion_tokens" => "max_tokens",
                "stop" => "stop_sequences",
                k @ ("temperature" | "top_p" | "top_k" | "metadata" | "thinking"
                | "service_tier") => k,
                _ => continue,
            };
            if !obj.contains(key) {
                let v = match (key, v) {
                    ("stop_sequences", Value::String(s)) => Value::Array(vec![s.clone().into()]),
                    _ => v.clone(),
                };
                obj.set(key, &v);
            }
        }
        if let (Some(prefix), Endpoint::Chat) = (&alias.system_prompt_prefix, ep) {
            let system = match obj.get_as::<Value>("system") {
                Ok(Some(Value::String(s))) => Value::String(format!("{prefix}\n\n{s}")),
                Ok(Some(Value::Array(mut blocks))) => {
                    blocks.insert(0, serde_json::json!({"type": "text", "text": prefix}));
                    Value::Array(blocks)
                }
                _ => Value::String(prefix.clone()),
            };
            obj.set("system", &system);
        }
    }
    let stream = ep == Endpoint::Chat
        && obj
            .get_as::<bool>("stream")
            .map_err(|_| ApiError::bad_request("stream must be a boolean").param("stream"))?
            .unwrap_or(false);
    let base = provider.chat_path.as_str();
    let path = match ep {
        Endpoint::CountTokens => format!("{base}/count_tokens"),
        _ => base.to_string(),
    };
    Ok(Plan {
        dialect: Dialect::Anthropic,
        path: provider.path_and_query(&path, None),
        body: Bytes::from(obj.to_vec()),
        stream,
        strip_usage_chunk: false,
        client_include_usage: true,
        dropped: Vec::new(),
        json_tool: None,
        passthrough: true,
        headers: req.headers.clone(),
    })
}

/// The canonical answer body in the door's API.
pub(super) fn encode_body(ctx: &RequestCtx, plan: &Plan, body: Bytes) -> Result<Bytes, ApiError> {
    if plan.passthrough || ctx.door == Door::Chat {
        return Ok(body);
    }
    messages::encode_response(&body)
        .map(Bytes::from)
        .map_err(|e| {
            ApiError::new(
                502,
                format!(
                    "the provider's answer cannot be given as a message: {}",
                    e.message
                ),
            )
            .code("upstream_invalid_response")
        })
}

/// The encoder of the canonical stream into the door's, if the door is not the canonical one.
pub fn stream_encoder(ctx: &RequestCtx, model: &str) -> Option<Box<dyn StreamEncoder>> {
    match ctx.door {
        Door::Chat => None,
        Door::Messages => Some(Box::new(messages::MessagesEncoder::new(model))),
    }
}

/// An error body (OpenAI's envelope) in the door's shape, with the door's status.
pub fn error_body(door: Door, status: u16, body: Bytes) -> (u16, Bytes) {
    match door {
        Door::Chat => (status, body),
        Door::Messages => {
            let (status, body) = messages::encode_error(status, &body);
            (status, Bytes::from(body))
        }
    }
}

/// `POST /v1/messages/count_tokens` for a provider that cannot count: the documented estimate.
pub fn count_tokens_estimate(raw: &[u8]) -> Result<Bytes, ApiError> {
    let n = messages::estimate_input_tokens(raw).map_err(|e| {
        let mut err = ApiError::bad_request(e.message).code("invalid_request");
        err.param = e.param;
        err
    })?;
    Ok(Bytes::from(format!("{{\"input_tokens\":{n}}}")))
}

pub use doors::EncodedStream;
