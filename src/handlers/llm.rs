//! `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`: read the body, route on its model,
//! rewrite the few fields the gateway owns, call the provider, relay the answer.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use filters::dialects::{self, Dialect, RequestOptions, StreamTranslator};
use filters::json_object::{ParseError, RawObject};
use filters::openai::ChatCompletionRequest;
use filters::stream_relay::{OpenAiStreamRelay, StreamEnd};
use filters::usage;
use http::{HeaderName, HeaderValue, Method};
use pingora::proxy::Session;
use serde_json::{Map, Value};

use super::dispatch::{Outcome, Served};
use super::door;
use crate::errors::ApiError;
use crate::proxy::{body, respond, Gateway, RequestCtx};
use crate::routing::Route;
use crate::upstream::{UpstreamError, UpstreamRequest, UpstreamResponse};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    /// `/v1/messages/count_tokens`: routed like chat, counted by the provider where it can.
    CountTokens,
}

impl Endpoint {
    fn streams(self) -> bool {
        matches!(self, Endpoint::Chat | Endpoint::Completions)
    }
}

/// The rewritten OpenAI request.
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
    // The whole body within `server.body_timeout`: a client trickling one byte per read
    // timeout cannot hold a buffer (and a worker's attention) for ever.
    let limit = gw.cfg.server.body_timeout.get();
    let raw = tokio::time::timeout(
        limit,
        body::read_limited(session, gw.cfg.server.max_request_body_size),
    )
    .await
    .map_err(|_| {
        session.set_keepalive(None);
        ApiError::new(
            408,
            format!("Timed out reading the request body (server.body_timeout = {limit:?})"),
        )
        .code("request_timeout")
    })??;
    ctx.bytes_in = raw.len();
    if gw.cfg.environment == crate::config::Environment::Development {
        // Development only: production never logs bodies.
        let end = raw.len().min(1024);
        ctx.body_sample = Some(String::from_utf8_lossy(&raw[..end]).into_owned());
    }
    let native = (ep == Endpoint::CountTokens).then(|| raw.clone());
    // From here on the request is the canonical one, whatever door it came through.
    let raw = if ep == Endpoint::CountTokens {
        raw
    } else {
        door::decode(session, ctx, raw)?
    };
    let mut obj =
        RawObject::parse_limited(&raw, gw.cfg.server.max_json_fields).map_err(|e| match e {
            ParseError::NotAnObject => ApiError::bad_request(e.to_string()).code("invalid_json"),
            ParseError::TooManyFields(n) => ApiError::bad_request(format!(
                "The request body has more than {n} top-level fields (server.max_json_fields)"
            ))
            .code("too_many_fields"),
            ParseError::Syntax(_) | ParseError::DuplicateKey(_) => ApiError::bad_request(format!(
                "We could not parse the JSON body of your request: {e}"
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
    let provider_param = provider_param
        .as_deref()
        .or_else(|| door::default_provider(gw, ctx, &model));
    let route = gw.router.route(&model, provider_param)?;
    let provider = route.provider.clone();
    ctx.provider = Some(provider.name.clone());
    ctx.upstream_model = Some(route.upstream_model.clone());
    ctx.completion_reserve = completion_reserve(gw, &obj, ep, &route)?;
    // Permission first: a caller who may not use a model learns nothing more. Then what
    // cannot be served at all, before anything is counted against the caller's limits.
    if let Some(p) = &ctx.principal {
        model_permitted(gw, p, &model, &route, &format!("The model {model:?}"))?;
    }
    if !provider.configured {
        return Err(not_configured(&provider.name));
    }
    if ep == Endpoint::CountTokens {
        // Counted, never charged: no admission against the caller's limits.
        let raw = native.unwrap_or_default();
        if provider.dialect != Dialect::Anthropic {
            let body = door::count_tokens_estimate(&raw)?;
            let mut h = respond::header(200, "application/json", ctx);
            let _ = h.insert_header("x-gateway-provider", provider.name.as_str());
            let _ = h.insert_header("x-gateway-estimate", "true");
            let _ = respond::full(session, ctx, h, body).await;
            return Ok(());
        }
        let h = &session.req_header().headers;
        let headers = ["anthropic-version", "anthropic-beta"]
            .iter()
            .filter_map(|n| Some((HeaderName::from_static(n), h.get(*n)?.clone())))
            .collect();
        ctx.door_request = Some(Box::new(door::DoorRequest {
            native_body: raw,
            dropped: Vec::new(),
            headers,
            relay: true,
        }));
    } else {
        admit(gw, ctx, &route).await?;
    }
    let missing_key = gw
        .pools
        .get(&provider.name)
        .map_or(provider.missing_key(), |p| p.missing_key());
    if missing_key {
        return Err(ApiError::bad_request(format!(
            "Provider {} has no API key configured (set {}_API_KEY)",
            provider.name,
            crate::config::providers::env_prefix(&provider.name)
        ))
        .code("provider_not_configured"));
    }
    if ep == Endpoint::Chat {
        if let Some(needed) = reasoning_needed(provider.dialect) {
            restore_reasoning_state(gw, ctx, &mut obj, needed).await?;
        }
    }
    if ep == Endpoint::Chat {
        // The hub check is a pointer test when MCP is off; the body is looked at only after.
        if let Some(mcp) = crate::handlers::tool_loop::active_hub(gw, session) {
            if crate::handlers::tool_loop::wants_tools(&obj) {
                // The loop works on the canonical exchange: no relay in the door's own API.
                if let Some(d) = &mut ctx.door_request {
                    d.relay = false;
                }
                return crate::handlers::tool_loop::run(gw, session, ctx, mcp, obj, &route).await;
            }
        }
    }
    let served = match super::dispatch::dispatch(gw, session, ctx, &mut obj, &route, ep).await? {
        Outcome::Ok(s) => s,
        Outcome::Error(s) => {
            let name = s.route.provider.name.clone();
            return relay_error(gw, session, ctx, &name, s.plan.dialect, s.resp).await;
        }
        Outcome::ClientGone => return Ok(()),
    };
    drop(obj);
    let Served { route, plan, resp } = served;
    if plan.stream && resp.is_event_stream() {
        relay_stream(gw, session, ctx, resp, &route, &plan).await;
        return Ok(());
    }
    relay_whole(gw, session, ctx, resp, &route, &plan).await
}

/// The reasoning state a dialect's turns must come back with (Anthropic thinking, Gemini
/// thought signatures), if any.
fn reasoning_needed(d: Dialect) -> Option<filters::reasoning::Needed> {
    match d {
        Dialect::Anthropic => Some(filters::reasoning::Needed::Thinking),
        Dialect::Google => Some(filters::reasoning::Needed::Signature),
        _ => None,
    }
}

pub(super) fn needs_reasoning_state(d: Dialect) -> bool {
    reasoning_needed(d).is_some()
}

/// The vault's scope for the caller: its principal, or everyone on an open gateway.
fn vault_scope(ctx: &RequestCtx) -> &str {
    ctx.principal.as_ref().map_or("", |p| p.id.as_str())
}

/// Puts kept reasoning state back into assistant turns the client sent without it (SDK stream
/// accumulators keep only `role`, `content` and `tool_calls`). Cheap when there is nothing to
/// do: a substring test on the raw messages.
async fn restore_reasoning_state(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    obj: &mut RawObject<'_>,
    needed: filters::reasoning::Needed,
) -> Result<(), ApiError> {
    if !gw.vault.enabled() {
        return Ok(());
    }
    let Some(raw) = obj.get("messages") else {
        return Ok(());
    };
    if !raw.get().contains("\"tool_calls\"") {
        return Ok(());
    }
    let mut messages: Vec<Value> = serde_json::from_str(raw.get())
        .map_err(|_| ApiError::bad_request("messages must be an array").param("messages"))?;
    let ids = filters::reasoning::ids_missing_state(&messages, needed);
    if ids.is_empty() {
        return Ok(());
    }
    let found = gw.vault.get(vault_scope(ctx), &ids).await;
    if filters::reasoning::restore(&mut messages, &found, needed) {
        ctx.client_messages = Some(raw.to_owned());
        obj.set("messages", &messages);
    }
    Ok(())
}

/// Keeps an answer's reasoning state for the client's next turn.
pub(super) fn keep_reasoning_state(
    gw: &Gateway,
    ctx: &RequestCtx,
    state: &filters::reasoning::TurnState,
) {
    gw.vault.put(vault_scope(ctx), state.entries());
}

/// A built-in provider nobody configured (e.g. `ollama` at its default URL) is not a target:
/// its default host may be anything on the gateway's network.
pub(super) fn not_configured(provider: &str) -> ApiError {
    let env = crate::config::providers::env_prefix(provider);
    ApiError::bad_request(format!(
        "Provider {provider} is not configured (set {env}_API_URL, {env}_API_KEY or {env}_ENABLE=true)"
    ))
    .code("provider_not_configured")
}

/// Whether `p` may use `route` (requested as `requested`): its model list, and a price when it
/// has a budget (a budget cannot hold if a model costs nothing by omission). `what` names the
/// model in the message. Also checked for every fallback.
pub(super) fn model_permitted(
    gw: &Gateway,
    p: &crate::auth::Principal,
    requested: &str,
    route: &Route<'_>,
    what: &str,
) -> Result<(), ApiError> {
    if !p.allows(requested, route) {
        return Err(
            ApiError::new(403, format!("{what} is not allowed for {}", p.name))
                .param("model")
                .code("model_not_allowed"),
        );
    }
    if p.limits.budget_usd.is_some()
        && !gw
            .limiter
            .prices
            .has(&route.provider.name, &route.upstream_model)
    {
        return Err(ApiError::new(
            403,
            format!(
                "{what} ({}/{}) has no price, so it cannot be charged to {}'s budget (add it to [models.\"provider/model\"] or [prices])",
                route.provider.name, route.upstream_model, p.name
            ),
        )
        .param("model")
        .code("model_not_priced"));
    }
    Ok(())
}

/// The most completion tokens a request may generate: `max_completion_tokens`, else
/// `max_tokens`, else `limits.default_completion_reserve` (never a provider default the gateway
/// adds), times the choices it asks for (`n`, `best_of`). Malformed values are refused here:
/// read leniently they would reserve nothing while the provider (vLLM coerces `"500"` and
/// `500.0`) generates the full amount.
pub(super) fn completion_reserve(
    gw: &Gateway,
    obj: &RawObject<'_>,
    ep: Endpoint,
    route: &Route<'_>,
) -> Result<u64, ApiError> {
    if matches!(ep, Endpoint::Embeddings | Endpoint::CountTokens) {
        return Ok(0);
    }
    let limits = &gw.cfg.limits;
    // The larger of the two: an upstream may read either (DeepSeek and others read only
    // `max_tokens`). 0, which some servers read as "their default", reserves the default.
    let mut max_out: Option<u64> = None;
    for field in ["max_completion_tokens", "max_tokens"] {
        let v = obj.get_as::<u64>(field).map_err(|_| {
            ApiError::bad_request(format!(
                "Invalid value for '{field}': expected a non-negative integer."
            ))
            .param(field)
            .code("invalid_value")
        })?;
        max_out = max_out.max(v.filter(|&n| n > 0));
    }
    let mut choices = 1;
    for field in ["n", "best_of"] {
        let v = obj.get_as::<u64>(field).map_err(|_| {
            ApiError::bad_request(format!(
                "Invalid value for '{field}': expected a positive integer."
            ))
            .param(field)
            .code("invalid_value")
        })?;
        match v {
            Some(0) => {
                return Err(ApiError::bad_request(format!(
                    "Invalid value for '{field}': expected a positive integer."
                ))
                .param(field)
                .code("invalid_value"))
            }
            Some(n) if n > limits.max_n => {
                return Err(ApiError::bad_request(format!(
                    "Invalid value for '{field}': at most {} choices per request on this gateway.",
                    limits.max_n
                ))
                .param(field)
                .code("invalid_value"))
            }
            Some(n) => choices = choices.max(n),
            None => {}
        }
    }
    // The model table may set the default per model (looked up only when it is needed).
    let default = || {
        model_entry(gw, route)
            .and_then(|e| e.completion_reserve)
            .unwrap_or(limits.default_completion_reserve)
    };
    Ok(max_out
        .unwrap_or_else(default)
        .min(1 << 32)
        .saturating_mul(choices))
}

/// What a call of `prompt_bytes` reserves: prompt bytes / 4 plus the completion reserve, and
/// their cost at `route`'s price.
pub(super) fn reserve_for(
    gw: &Gateway,
    route: &Route<'_>,
    prompt_bytes: usize,
    completion: u64,
) -> crate::limits::Reserve {
    let prompt = (prompt_bytes as u64).div_ceil(4);
    let usage = usage::Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt.saturating_add(completion),
        ..Default::default()
    };
    crate::limits::Reserve {
        // Capped so a silly max_tokens cannot overflow the counters (it still exceeds any TPM).
        tokens: usage.total_tokens.min(1 << 40),
        cost_usd: gw
            .limiter
            .prices
            .cost(&route.provider.name, &route.upstream_model, &usage),
    }
}

/// The caller's limits (keys, OIDC tiers; the model allowance is checked before): 429 or 503
/// before any upstream call; on success the admission is kept for settlement when the request
/// ends.
async fn admit(gw: &Gateway, ctx: &mut RequestCtx, route: &Route<'_>) -> Result<(), ApiError> {
    let Some(p) = &ctx.principal else {
        return Ok(());
    };
    // Every principal is admitted (its spend is recorded even without limits).
    let reserve = reserve_for(gw, route, ctx.bytes_in, ctx.completion_reserve);
    // The concurrency lease is named by the gateway, never by the client's X-Request-Id (a
    // reused id would share one slot).
    match gw
        .limiter
        .admit(p, reserve, &crate::request_id::generate())
        .await
    {
        Ok((adm, headers)) => {
            ctx.admission = Some(adm);
            ctx.rate_headers = Some(headers);
            Ok(())
        }
        Err(denied) => {
            let (err, headers) = limit_error(p, denied, reserve.tokens);
            if headers.is_some() {
                ctx.rate_headers = headers;
            }
            Err(err)
        }
    }
}

/// The answer to a refused admission (and its `x-ratelimit-*` values).
pub(super) fn limit_error(
    p: &crate::auth::Principal,
    denied: crate::limits::Denied,
    asked_tokens: u64,
) -> (ApiError, Option<crate::limits::RateHeaders>) {
    use crate::limits::{Denied, Refusal};
    let (r, headers) = match denied {
        Denied::Unavailable => {
            return (
                ApiError::new(
                    503,
                    "Rate limits cannot be checked right now (limits backend unavailable)",
                )
                .code("limits_unavailable"),
                None,
            )
        }
        Denied::Refused(r, headers) => (r, headers),
    };
    let mut err = match r {
        Refusal::Budget => ApiError::new(
            429,
            format!(
                "You exceeded your current quota: the budget of {} is spent.",
                p.name
            ),
        )
        .code("insufficient_quota"),
        Refusal::Concurrency => {
            ApiError::new(429, format!("Too many concurrent requests for {}.", p.name))
                .code("rate_limit_exceeded")
        }
        Refusal::Rpm => ApiError::new(
            429,
            format!("Rate limit reached for {}: requests per minute.", p.name),
        )
        .code("rate_limit_exceeded"),
        Refusal::Tpm => match p.limits.tpm {
            Some(tpm) if asked_tokens > tpm => ApiError::new(
                429,
                format!(
                    "Request too large for {}: it may use up to {asked_tokens} tokens (prompt, max_tokens x n), more than its limit of {tpm} tokens per minute. Lower max_tokens or n.",
                    p.name
                ),
            )
            .code("rate_limit_exceeded"),
            _ => ApiError::new(
                429,
                format!("Rate limit reached for {}: tokens per minute.", p.name),
            )
            .code("rate_limit_exceeded"),
        },
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    err.retry_after = match r {
        Refusal::Concurrency => Some(std::time::Duration::from_secs(1)),
        // A budget comes back with its next period (never, for `total`).
        Refusal::Budget => crate::limits::period_reset_secs(p.limits.budget_period, now)
            .map(std::time::Duration::from_secs),
        Refusal::Rpm | Refusal::Tpm => Some(crate::limits::retry_after(&headers)),
    };
    (err, Some(headers))
}

/// Rewrites the client's body for the routed provider and decides the upstream call.
pub(super) fn plan_call(
    gw: &Gateway,
    door_req: Option<&door::DoorRequest>,
    obj: &mut RawObject<'_>,
    route: &Route<'_>,
    ep: Endpoint,
) -> Result<Plan, ApiError> {
    let provider = &route.provider;
    if let Some(req) = door_req.filter(|r| r.relay && provider.dialect == Dialect::Anthropic) {
        return door::plan_passthrough(req, route, ep);
    }
    if ep == Endpoint::CountTokens {
        return Err(ApiError::bad_request(format!(
            "Provider {} cannot count tokens",
            provider.name
        ))
        .code("unsupported_request"));
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
        passthrough: false,
        headers: Vec::new(),
    })
}

/// Sends the planned call to one backend and waits for the response head while watching the
/// client: if it hangs up, the upstream call is dropped (its connection closed) instead of
/// generating tokens nobody reads, and `Ok(None)` is returned. Non-2xx responses are returned
/// for the caller to judge (retry, fall back, or relay).
pub(super) async fn send_to(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    backend: &crate::providers::Provider,
    plan: &Plan,
    timeouts: &crate::upstream::Timeouts,
) -> Result<Option<UpstreamResponse>, UpstreamError> {
    let accept = if plan.stream {
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
    let with_door_headers;
    let headers: &[(HeaderName, HeaderValue)] = if plan.headers.is_empty() {
        &headers
    } else {
        with_door_headers = [&headers[..], &plan.headers[..]].concat();
        &with_door_headers
    };
    let req = UpstreamRequest {
        method: Method::POST,
        path: &plan.path,
        headers,
        body: plan.body.clone(),
        request_id: &ctx.request_id,
        timeouts: Some(timeouts),
    };
    ctx.upstream_calls += 1;
    let waited = Instant::now();
    let sent = tokio::select! {
        r = gw.client.send(backend, &req) => r,
        _ = session.as_downstream_mut().read_body_or_idle(true) => {
            ctx.upstream_wait += waited.elapsed();
            mark_client_gone(session, ctx);
            // The body was (being) sent: the provider bills the prompt it processed, so the
            // caller is charged at least the prompt estimate.
            if ctx.usage.is_none() && ctx.estimated_usage.is_none() {
                ctx.estimated_usage = Some(((plan.body.len() as u64).div_ceil(4), 0));
            }
            return Ok(None);
        }
    };
    ctx.upstream_wait += waited.elapsed();
    let resp = sent.inspect_err(|e| ctx.upstream_failure = Some(e.reason()))?;
    ctx.upstream_addr = Some(resp.addr);
    ctx.upstream_retries += resp.retries;
    let status = resp.status();
    if !(200..300).contains(&status) {
        ctx.upstream_failure = Some(match status {
            429 => "status_429",
            500..=599 => "status_5xx",
            _ => "status_4xx",
        });
    }
    Ok(Some(resp))
}

/// The client hung up.
pub(super) fn mark_client_gone(session: &mut Session, ctx: &mut RequestCtx) {
    ctx.client_gone = true;
    ctx.error = Some("client_disconnected");
    // The idle probe may have consumed a byte of a pipelined request: never reuse.
    session.set_keepalive(None);
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
    /// Relayed in the client's own API (door = dialect): the answer is not translated.
    pub(super) passthrough: bool,
    /// Headers of the client's API forwarded on a relay (`anthropic-version`, ...).
    pub(super) headers: Vec<(HeaderName, HeaderValue)>,
}

/// The model table's entry for a route's upstream model.
fn model_entry<'g>(gw: &'g Gateway, route: &Route<'_>) -> Option<&'g crate::config::ModelEntry> {
    gw.cfg
        .model_table
        .find(&route.provider.name, &route.upstream_model)
}

/// Translates the (already rewritten) OpenAI body into the provider's native request.
fn plan_native(gw: &Gateway, route: &Route<'_>, prepared: Prepared) -> Result<Plan, ApiError> {
    let provider = &route.provider;
    let req: ChatCompletionRequest = serde_json::from_slice(&prepared.body).map_err(|e| {
        ApiError::bad_request(format!("Invalid chat completion request: {e}"))
            .code("invalid_request")
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
        let mut err = ApiError::bad_request(e.message).code("unsupported_request");
        err.param = e.param;
        err
    })?;
    let path = match provider.dialect {
        Dialect::Google => {
            // The model becomes part of the URL path: allow only model-name characters, so a
            // name cannot change the method (`x:countTokens?`) or slip past the model lists
            // (`models/...`).
            let m = &route.upstream_model;
            if !m
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                || m.contains("..")
            {
                return Err(ApiError::bad_request(format!(
                    "Invalid model name {m:?} for provider {}: letters, digits, '-', '_' and '.' only",
                    provider.name
                ))
                .param("model")
                .code("invalid_model"));
            }
            let p = dialects::google::path(&route.upstream_model, native.stream);
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
        passthrough: false,
        headers: Vec::new(),
    })
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
fn prepare(
    obj: &mut RawObject<'_>,
    route: &Route<'_>,
    ep: Endpoint,
    inject_usage: bool,
) -> Result<Prepared, ApiError> {
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
    if stream && inject_usage {
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
    ctx.upstream_wait += waited.elapsed();
    let body = match read {
        Ok(b) => b,
        Err(UpstreamError::TooLarge) => Bytes::new(),
        Err(e) => return Err(ApiError::new(e.status(), e.message(provider)).code(e.code())),
    };
    let mut h = respond::header(status, "application/json", ctx);
    for (k, v) in resp.header().headers.iter() {
        let n = k.as_str();
        // A key's own x-ratelimit-* (set by `respond::header`) are not replaced by the
        // provider account's.
        if n == "retry-after" || (n.starts_with("x-ratelimit-") && ctx.rate_headers.is_none()) {
            let _ = h.insert_header(k.clone(), v.clone());
        }
    }
    gw.client.release(resp).await;
    ctx.error = Some("upstream_error");
    // OpenAI-style bodies pass unchanged; native and non-JSON ones are mapped to the envelope,
    // then to the door's.
    let body = Bytes::from(dialects::translate_error(dialect, status, provider, &body));
    let (door_status, body) = door::error_body(ctx.door, status, body);
    if door_status != status {
        h.set_status(door_status).expect("valid status");
    }
    let _ = respond::full(session, ctx, h, body).await;
    Ok(())
}

pub(super) fn gateway_headers(
    h: &mut pingora::http::ResponseHeader,
    ctx: &RequestCtx,
    route: &Route<'_>,
    plan: &Plan,
) {
    let _ = h.insert_header("x-gateway-provider", route.provider.name.as_str());
    // What the door could not carry (unless relayed as sent), then what the dialect could not.
    let door_dropped = ctx
        .door_request
        .as_ref()
        .filter(|_| !plan.passthrough)
        .map_or(&[][..], |d| &d.dropped[..]);
    if !plan.dropped.is_empty() || !door_dropped.is_empty() {
        let all: Vec<&str> = door_dropped
            .iter()
            .chain(&plan.dropped)
            .map(String::as_str)
            .collect();
        let _ = h.insert_header("x-gateway-dropped-params", all.join(","));
    }
    if let Ok(v) = HeaderValue::from_str(&route.upstream_model) {
        let _ = h.insert_header(HeaderName::from_static("x-gateway-model"), v);
    }
}

/// Non-streaming success: relay the body byte-for-byte (OpenAI dialect) or translated, and
/// record its usage.
async fn relay_whole(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    resp: UpstreamResponse,
    route: &Route<'_>,
    plan: &Plan,
) -> Result<(), ApiError> {
    let (status, body, content_type) = read_openai_body(gw, ctx, resp, route, plan).await?;
    if plan.passthrough {
        ctx.usage = filters::doors::messages::usage_of_message(&body);
        ctx.tool_calls = filters::doors::messages::tool_calls_of_message(&body);
    } else {
        if needs_reasoning_state(plan.dialect) {
            if let Some(state) = filters::reasoning::TurnState::from_completion(&body) {
                keep_reasoning_state(gw, ctx, &state);
            }
        }
        ctx.usage = usage::from_response_body(&body);
        ctx.tool_calls = usage::tool_calls_from_body(&body);
    }
    let body = door::encode_body(ctx, plan, body)?;
    let mut h = respond::header(status, &content_type, ctx);
    gateway_headers(&mut h, ctx, route, plan);
    if respond::full(session, ctx, h, body).await.is_err() {
        ctx.client_gone = true;
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
    ctx.upstream_wait += waited.elapsed();
    let raw = read.map_err(|e| {
        ctx.upstream_failure = Some(e.reason());
        ApiError::new(e.status(), e.message(provider)).code(e.code())
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
                ctx.upstream_failure = Some("invalid_response");
                match e.code {
                    // Read, but the provider says it failed (a malformed tool call...).
                    Some(code) => {
                        ApiError::new(502, format!("provider {provider}: {}", e.message)).code(code)
                    }
                    None => ApiError::new(
                        502,
                        format!(
                            "provider {provider} sent a response the gateway cannot read: {}",
                            e.message
                        ),
                    )
                    .code("upstream_invalid_response"),
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

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
                ctx.upstream_failure = Some("oversized_event");
                StreamEnd::Failed {
                    message: format!("provider {provider} sent an oversized stream event"),
                    code: "upstream_stream_error",
                }
            }
        },
        Ok(None) => StreamEnd::Clean,
        Err(e) => {
            ctx.upstream_failure = Some(match e {
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
async fn relay_stream(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut resp: UpstreamResponse,
    route: &Route<'_>,
    plan: &Plan,
) {
    let provider = route.provider.name.as_str();
    let mut h = respond::header(200, "text/event-stream", ctx);
    let _ = h.insert_header(http::header::CACHE_CONTROL, "no-cache");
    let _ = h.insert_header("x-accel-buffering", "no");
    gateway_headers(&mut h, ctx, route, plan);
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
    let mut relay = stream_translator(gw, route, plan, false);
    if !plan.passthrough {
        if let Some(enc) = door::stream_encoder(ctx, &route.upstream_model) {
            relay = Box::new(door::EncodedStream::new(relay, enc));
        }
    }
    let metrics = gw.metrics.as_deref();
    let model = crate::proxy::record::bounded_model(&route.upstream_model);
    // Per-stream handles, resolved once: the per-chunk cost is one histogram observe.
    let itl = metrics.map(|m| m.inter_token_latency.with_label_values(&[provider, model]));
    let active = metrics.map(|m| m.active_streams.with_label_values(&[provider]));
    if let Some(a) = &active {
        a.inc();
    }
    let mut out = BytesMut::with_capacity(4096);
    let mut clean = false;
    let mut first_write: Option<Instant> = None;
    let mut last_write = Instant::now();
    loop {
        let waited = Instant::now();
        let next = tokio::select! {
            r = resp.read_chunk() => r,
            _ = session.as_downstream_mut().read_body_or_idle(true) => {
                // Client hung up: drop the upstream connection so generation stops.
                ctx.upstream_wait += waited.elapsed();
                ctx.client_gone = true;
                break;
            }
        };
        ctx.upstream_wait += waited.elapsed();
        let end = feed_read(ctx, provider, relay.as_mut(), next, &mut out);
        let last = end.is_some();
        if let Some(end) = end {
            clean = end == StreamEnd::Clean;
            if !clean {
                ctx.error = Some("upstream_stream_error");
            }
        }
        if !out.is_empty() || last {
            let data = out.split().freeze();
            ctx.bytes_out += data.len();
            let now = Instant::now();
            match first_write {
                None => {
                    first_write = Some(now);
                    ctx.ttft = Some(now - ctx.start);
                }
                Some(_) => {
                    if let Some(h) = &itl {
                        h.observe((now - last_write).as_secs_f64());
                    }
                }
            }
            last_write = now;
            if session.write_response_body(Some(data), last).await.is_err() {
                ctx.client_gone = true;
                break;
            }
        }
        if last {
            break;
        }
    }
    if let Some(a) = &active {
        a.dec();
    }
    ctx.generation = first_write.map(|f| last_write - f);
    ctx.usage = relay.usage().cloned();
    let stats = relay.stats();
    if needs_reasoning_state(plan.dialect) && !plan.passthrough {
        keep_reasoning_state(gw, ctx, &stats.reasoning);
    }
    ctx.tool_calls = stats.tool_calls.clone();
    if ctx.usage.is_none() {
        // The stream ended (disconnect, failure, or a provider without stream usage) before any
        // usage report: record an estimate rather than nothing (see README "Metrics").
        ctx.estimated_usage = Some((
            (ctx.bytes_in as u64).div_ceil(4),
            stats.estimated_completion_tokens(),
        ));
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
