//! Planning one upstream call: the client's canonical body rewritten for the routed provider
//! (model, alias defaults and system prefix, `include_usage`), translated into its dialect, or
//! the client's original request relayed when the provider speaks the door's API.

use bytes::Bytes;
use filters::dialects::{self, Dialect, RequestOptions};
use filters::json_object::RawObject;
use filters::openai::ChatCompletionRequest;
use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::{Endpoint, OriginalRequest};
use crate::errors::{ApiError, Code};
use crate::proxy::Gateway;
use crate::routing::Route;

/// The rewritten OpenAI request.
struct Prepared {
    body: Bytes,
    stream: bool,
    /// The gateway added `include_usage`; hide the usage-only chunk from the client.
    strip_usage_chunk: bool,
}

/// Rewrites the client's body for the routed provider and decides the upstream call.
pub(super) fn plan_call(
    gw: &Gateway,
    door: filters::doors::Door,
    original: Option<&OriginalRequest>,
    obj: &mut RawObject<'_>,
    route: &Route,
    ep: Endpoint,
) -> Result<Plan, ApiError> {
    let provider = &route.provider;
    if let Some(o) = original.filter(|o| o.relays_to(door, provider)) {
        return plan_relay(door, o, route, ep);
    }
    if let Some(o) = original {
        // What only a provider of the door's own API can do.
        if let Some(tool) = o.hosted_tools.first() {
            return Err(ApiError::of(
                Code::UnsupportedTool,
                format!(
                    "The hosted tool {tool:?} is only run by an OpenAI Responses provider; provider {} cannot run it",
                    provider.name
                ),
            )
            .param("tools"));
        }
        if let Some(what) = o.native_only.first() {
            return Err(ApiError::of(
                Code::InvalidRequest,
                format!("{what}; provider {} cannot read it", provider.name),
            )
            .param("input"));
        }
        if o.previous_upstream {
            return Err(ApiError::of(
                Code::ResponseNotFound,
                "Response with this previous_response_id not found.",
            )
            .param("previous_response_id"));
        }
    }
    if ep == Endpoint::CountTokens {
        return Err(ApiError::of(
            Code::UnsupportedRequest,
            format!("Provider {} cannot count tokens", provider.name),
        ));
    }
    let native = ep == Endpoint::Chat && provider.dialect != Dialect::Openai;
    let mut dropped = Vec::new();
    if !native && !provider.stream_usage && obj.remove("stream_options") {
        // A server that refuses the field (Mistral: 422) reports usage on its own.
        dropped.push("stream_options".to_string());
    }
    let prepared = prepare(obj, route, ep, !native && provider.stream_usage)?;
    if native {
        return plan_native(gw, route, prepared);
    }
    let path = match ep {
        Endpoint::Chat | Endpoint::CountTokens => &provider.chat_path,
        Endpoint::Completions => &provider.completions_path,
        Endpoint::Embeddings => &provider.embeddings_path,
    };
    Ok(Plan {
        dialect: Dialect::Openai,
        path: provider.path_and_query(path, None),
        body: prepared.body,
        stream: prepared.stream,
        strip_usage_chunk: prepared.strip_usage_chunk,
        client_include_usage: !prepared.strip_usage_chunk,
        dropped,
        json_tool: None,
        relayed: None,
        headers: Vec::new(),
    })
}

/// Everything decided about the upstream call before it is made.
#[derive(Clone)]
pub(super) struct Plan {
    pub(super) dialect: Dialect,
    pub(super) path: String,
    pub(super) body: Bytes,
    pub(super) stream: bool,
    /// OpenAI dialect: the gateway injected `include_usage`; hide the usage-only chunk.
    pub(super) strip_usage_chunk: bool,
    /// The client asked for the usage-only chunk.
    pub(super) client_include_usage: bool,
    /// Parameters the target API cannot express.
    pub(super) dropped: Vec<String>,
    /// `response_format` emulated with this forced tool (see `NativeRequest::json_tool`).
    pub(super) json_tool: Option<String>,
    /// Relayed in the client's own API (the door's native dialect): the answer is not
    /// translated, and the door reads its usage.
    pub(super) relayed: Option<filters::doors::Door>,
    /// Headers of the client's API forwarded on a relay (`anthropic-version`, ...).
    pub(super) headers: Vec<(HeaderName, HeaderValue)>,
}

/// The model table's entry for a route's upstream model.
pub(super) fn model_entry<'g>(
    gw: &'g Gateway,
    route: &Route,
) -> Option<&'g crate::config::ModelEntry> {
    gw.cfg
        .model_table
        .find(&route.provider.name, &route.upstream_model)
}

/// Translates the (already rewritten) OpenAI body into the provider's native request.
fn plan_native(gw: &Gateway, route: &Route, prepared: Prepared) -> Result<Plan, ApiError> {
    let provider = &route.provider;
    let req: ChatCompletionRequest = serde_json::from_slice(&prepared.body).map_err(|e| {
        ApiError::of(
            Code::InvalidRequest,
            format!("Invalid chat completion request: {e}"),
        )
    })?;
    let client_include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    // The provider's own setting, else the model's output limit from the model table (not a
    // flat 4,096 that cuts long answers), else 4,096.
    let entry = model_entry(gw, route);
    let opts = RequestOptions {
        default_max_tokens: provider
            .default_max_tokens
            .or(entry.and_then(|e| e.max_output_tokens))
            .unwrap_or(4096),
        sampling_exclusive: entry.and_then(|e| e.sampling_exclusive),
        structured_outputs: entry.and_then(|e| e.structured_outputs),
        thinking_budget: entry
            .and_then(|e| e.thinking_budget)
            .map(|[lo, hi]| (lo, hi)),
        max_output_tokens: entry.and_then(|e| e.max_output_tokens),
    };
    let native = dialects::translate_request(provider.dialect, &req, &opts).map_err(|e| {
        let mut err = ApiError::of(Code::UnsupportedRequest, e.message);
        err.param = e.param;
        err
    })?;
    let path = match provider.dialect {
        Dialect::Google => {
            let m = &route.upstream_model;
            let p = dialects::google::path(m, native.stream).ok_or_else(|| {
                ApiError::of(
                    Code::InvalidModel,
                    format!(
                        "Invalid model name {m:?} for provider {}: letters, digits, '-', '_' and '.' only",
                        provider.name
                    ),
                )
                .param("model")
            })?;
            let (endpoint, query) = p
                .split_once('?')
                .map_or((p.as_str(), None), |(a, b)| (a, Some(b)));
            provider.path_and_query(endpoint, query)
        }
        _ => provider.path_and_query(&provider.chat_path, None),
    };
    Ok(Plan {
        dialect: provider.dialect,
        path,
        body: Bytes::from(native.body),
        stream: native.stream,
        strip_usage_chunk: false,
        client_include_usage,
        dropped: native.dropped,
        json_tool: native.json_tool,
        relayed: None,
        headers: Vec::new(),
    })
}

/// Rewrites the request body for the upstream: the routed model name, alias defaults and system
/// prompt prefix, and `stream_options.include_usage` so usage is never missing from a stream.
fn prepare(
    obj: &mut RawObject<'_>,
    route: &Route,
    ep: Endpoint,
    inject_usage: bool,
) -> Result<Prepared, ApiError> {
    obj.set("model", &route.upstream_model);
    if let Some(alias) = route.alias.as_deref() {
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
            .map_err(|_| {
                ApiError::of(Code::InvalidRequest, "stream must be a boolean").param("stream")
            })?
            .unwrap_or(false)
    } else {
        false
    };
    let mut strip_usage_chunk = false;
    if stream && inject_usage {
        let mut opts: Map<String, Value> = obj
            .get_as("stream_options")
            .map_err(|_| {
                ApiError::of(Code::InvalidRequest, "stream_options must be an object")
                    .param("stream_options")
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
        .map_err(|_| {
            ApiError::of(Code::InvalidRequest, "messages must be an array").param("messages")
        })?
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

/// No alias defaults.
static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

/// The relay of a request to a provider of the door's own API (Messages to Anthropic): the
/// client's body rewritten by the door (`Door::relay_body`) and its API
/// headers (`anthropic-version` / `anthropic-beta`).
pub(super) fn plan_relay(
    door: filters::doors::Door,
    req: &OriginalRequest,
    route: &Route,
    ep: Endpoint,
) -> Result<Plan, ApiError> {
    let provider = &route.provider;
    let alias = route.alias.as_deref();
    let client_body = match &req.relay_thin {
        Some((holder, thin)) if *holder == provider.name => thin,
        _ => &req.body,
    };
    let (body, stream) = door
        .relay_body(
            client_body,
            &route.upstream_model,
            alias.map_or(&EMPTY, |a| &a.defaults),
            alias
                .and_then(|a| a.system_prompt_prefix.as_deref())
                .filter(|_| ep == Endpoint::Chat),
        )
        .map_err(|e| {
            let mut err = ApiError::of(Code::InvalidRequest, e.message);
            err.param = e.param;
            err
        })?;
    let stream = stream && ep == Endpoint::Chat;
    let base = match door {
        filters::doors::Door::Responses => provider.responses_path.as_str(),
        _ => provider.chat_path.as_str(),
    };
    let path = match ep {
        Endpoint::CountTokens => format!("{base}/count_tokens"),
        _ => base.to_string(),
    };
    Ok(Plan {
        dialect: provider.dialect,
        path: provider.path_and_query(&path, None),
        body: Bytes::from(body),
        stream,
        strip_usage_chunk: false,
        client_include_usage: true,
        dropped: Vec::new(),
        json_tool: None,
        relayed: Some(door),
        headers: req.headers.clone(),
    })
}
