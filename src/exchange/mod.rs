//! The exchange: one canonical request (Chat Completions, whichever door it came through) is
//! routed, admitted against the caller's limits, sent in the provider's dialect with retries and
//! fallbacks (or run through the MCP loop), and its answer relayed back through the door's
//! encoder. Doors call [`run`]; nothing here knows which door called (only the `Door` value in
//! the record, whose encoders are pure code in `filters::doors`).
//!
//! `admission` (permissions, reserves, limits) -> `plan` (the body and path for one provider)
//! -> `dispatch` (backends, retries, fallbacks) -> `relay` (the answer to the client, through
//! `client`'s writer); `tool_loop` repeats plan/dispatch/relay per round.

pub(crate) mod admission;
mod cached;
mod client;
mod dispatch;
mod guarded;
mod plan;
mod relay;
pub mod tool_loop;

use bytes::Bytes;
use filters::dialects::Dialect;
use filters::json_object::{ParseError, RawObject};
use http::{HeaderName, HeaderValue};
use pingora::proxy::Session;
use serde_json::Value;

pub(crate) use self::admission::limit_error;
use self::admission::{completion_reserve, model_permitted};
use self::dispatch::{Outcome, Served};
use crate::errors::{ApiError, Code};
use crate::proxy::{respond, Gateway, RequestCtx};

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

/// What a door hands the exchange.
pub struct Inbound {
    /// The canonical request: a Chat Completions body (or, for `CountTokens`, the door's own).
    pub body: Bytes,
    /// Provider of a model name that names none (the Messages door's default provider).
    pub default_provider: Option<String>,
    /// `CountTokens`: the door's estimate, the answer where the provider cannot count.
    pub estimate: Option<u64>,
}

/// The request as the client sent it, in its door's API, kept for a provider that speaks that
/// API (relayed with only the model rewritten).
pub struct OriginalRequest {
    pub body: Bytes,
    /// What the canonical request could not carry (`x-gateway-dropped-params` when translated).
    pub dropped: Vec<String>,
    /// The client's API headers to forward on a relay (`anthropic-version`, `anthropic-beta`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Relaying is allowed (off in the MCP loop, which works on the canonical exchange).
    pub relay: bool,
    /// Hosted tools (web search, ...): only a provider serving the door's API runs them.
    pub hosted_tools: Vec<String>,
    /// Input only a provider serving the door's API reads (file ids, item references).
    pub native_only: Vec<String>,
    /// `previous_response_id` the gateway does not hold: only a Responses upstream may.
    pub previous_upstream: bool,
    /// The request as the client sent it, for a relay to the provider (by name) that holds
    /// its `previous_response_id` itself (`body` has the conversation expanded).
    pub relay_thin: Option<(String, Bytes)>,
}

impl OriginalRequest {
    /// Whether a call to `provider` is relayed in the client's own API: Messages to an
    /// Anthropic provider, Responses to one serving the Responses API (`responses_api`).
    pub fn relays_to(
        &self,
        door: filters::doors::Door,
        provider: &crate::providers::Provider,
    ) -> bool {
        self.relay
            && match door {
                filters::doors::Door::Responses => provider.responses_native,
                d => d.native_dialect() == Some(provider.dialect),
            }
    }
}

/// The canonical body as a raw object: validated JSON, at most `server.max_json_fields`
/// top-level fields, no duplicate keys; values stay borrowed slices.
fn parse_body<'b>(gw: &Gateway, raw: &'b [u8]) -> Result<RawObject<'b>, ApiError> {
    RawObject::parse_limited(raw, gw.cfg.server.max_json_fields).map_err(|e| match e {
        ParseError::NotAnObject => ApiError::of(Code::InvalidJson, e.to_string()),
        ParseError::TooManyFields(n) => ApiError::of(
            Code::TooManyFields,
            format!("The request body has more than {n} top-level fields (server.max_json_fields)"),
        ),
        ParseError::Syntax(_) | ParseError::DuplicateKey(_) => ApiError::of(
            Code::InvalidJson,
            format!("We could not parse the JSON body of your request: {e}"),
        ),
    })
}

/// The requested model: a non-empty string.
fn model_of(obj: &RawObject<'_>) -> Result<String, ApiError> {
    obj.get_as::<String>("model")
        .map_err(|_| ApiError::of(Code::InvalidRequest, "model must be a string").param("model"))?
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ApiError::of(Code::MissingModel, "you must provide a model parameter").param("model")
        })
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
    ctx.caller.principal.as_ref().map_or("", |p| p.id.as_str())
}

/// A built-in provider nobody configured (e.g. `ollama` at its default URL) is not a target:
/// its default host may be anything on the gateway's network.
pub(super) fn not_configured(provider: &str) -> ApiError {
    let env = crate::config::providers::env_prefix(provider);
    ApiError::of(Code::ProviderNotConfigured, format!(
        "Provider {provider} is not configured (set {env}_API_URL, {env}_API_KEY or {env}_ENABLE=true)"
    ))
}

pub(crate) fn query_param(session: &Session, name: &str) -> Option<String> {
    let q = session.req_header().uri.query()?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name && !v.is_empty()).then(|| v.to_string())
    })
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One request on its way through the exchange: the gateway, the client's connection and the
/// request's record, held together so the steps of the path are its methods (`serve`,
/// `dispatch`, `relay_*`) instead of helpers passing all three along.
pub struct Exchange<'g, 's> {
    pub gw: &'g Gateway,
    pub session: &'s mut Session,
    pub ctx: &'s mut RequestCtx,
}

impl<'g, 's> Exchange<'g, 's> {
    /// The three, for one step taken outside an exchange's own methods (the MCP loop's rounds).
    pub(super) fn of(gw: &'g Gateway, session: &'s mut Session, ctx: &'s mut RequestCtx) -> Self {
        Exchange { gw, session, ctx }
    }
}

/// Serves a canonical request; `Err` only while nothing has been written to the client.
pub async fn run(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    ep: Endpoint,
    inbound: Inbound,
) -> Result<(), ApiError> {
    Exchange { gw, session, ctx }.serve(ep, inbound).await
}

impl<'g> Exchange<'g, '_> {
    /// Serves a canonical request; `Err` only while nothing has been written to the client.
    /// Serves a canonical request; `Err` only while nothing has been written to the client.
    async fn serve(&mut self, ep: Endpoint, inbound: Inbound) -> Result<(), ApiError> {
        let raw = inbound.body;
        let mut obj = parse_body(self.gw, &raw)?;
        let model = model_of(&obj)?;
        self.ctx.model = Some(model.clone());

        let provider_param = query_param(self.session, "provider");
        let provider_param = provider_param.or_else(|| {
            inbound
                .default_provider
                .filter(|_| !self.gw.router.resolves(&model))
        });
        let route = self.gw.router.route(&model, provider_param.as_deref())?;
        if self.ctx.trace.is_some() {
            self.trace_request(&obj);
        }
        let provider = route.provider.clone();
        self.ctx.upstream.provider = Some(provider.name.clone());
        self.ctx.upstream.model = Some(route.upstream_model.clone());
        self.ctx.caller.completion_reserve = completion_reserve(self.gw, &obj, ep, &route)?;
        // Permission first: a caller who may not use a model learns nothing more. Then what
        // cannot be served at all, before anything is counted against the caller's limits.
        if let Some(p) = &self.ctx.caller.principal {
            model_permitted(self.gw, p, &model, &route, || {
                format!("The model {model:?}")
            })?;
        }
        if !provider.configured {
            return Err(not_configured(&provider.name));
        }
        if ep == Endpoint::CountTokens {
            // Counted, never charged: no admission against the caller's limits. A provider that
            // does not speak the door's API cannot count: the door's estimate is the answer.
            let relayed = self
                .ctx
                .original
                .as_ref()
                .is_some_and(|o| o.relays_to(self.ctx.door, &provider));
            if !relayed {
                Box::pin(self.answer_estimate(&provider.name, inbound.estimate)).await;
                return Ok(());
            }
        } else {
            // Input guardrails, then the cache, then admission.
            self.input_guardrails(&mut obj, &model).await?;
            // The cache answers before admission; a hit is admitted as a request only.
            let will_loop = ep == Endpoint::Chat
                && tool_loop::active_tools(self.gw, self.session).is_some()
                && tool_loop::wants_tools(&obj);
            let looked_up = std::time::Instant::now();
            // Every large step but the stream relay is boxed: this future lives as long as the
            // request (a stream's whole life) at the size of its largest step (issue 22: memory
            // per idle stream; the call's step alone is over 20 KB).
            let hit = match self.gw.cache.is_some() {
                true => Box::pin(self.cache_lookup(ep, &raw, &obj, &route, will_loop)).await,
                false => None,
            };
            self.trace_cache_lookup(looked_up);
            if let Some(entry) = hit {
                Box::pin(self.admit_reserve(crate::limits::Reserve::default())).await?;
                return Box::pin(self.serve_hit(&obj, &route, entry)).await;
            }
            if self.ctx.caller.principal.is_some() {
                // Only callers are admitted (an open gateway has no one to count).
                Box::pin(self.admit(&route)).await?;
            }
        }
        let missing_key = self
            .gw
            .pools
            .get(&provider.name)
            .map_or(provider.missing_key(), |p| p.missing_key());
        if missing_key {
            return Err(ApiError::of(
                Code::ProviderNotConfigured,
                format!(
                    "Provider {} has no API key configured (set {}_API_KEY)",
                    provider.name,
                    crate::config::providers::env_prefix(&provider.name)
                ),
            ));
        }
        if ep == Endpoint::Chat {
            if let Some(needed) = reasoning_needed(provider.dialect) {
                Box::pin(self.restore_reasoning_state(&mut obj, needed)).await?;
            }
        }
        if ep == Endpoint::Chat {
            // The hub check is a pointer test when MCP is off; the body is looked at only after.
            if let Some(tools) = tool_loop::active_tools(self.gw, self.session) {
                if tool_loop::wants_tools(&obj) {
                    // The loop works on the canonical exchange: no relay in the door's own API.
                    if let Some(o) = &mut self.ctx.original {
                        o.relay = false;
                    }
                    // Boxed: the loop's state is large, and debug builds start futures on the stack.
                    return Box::pin(tool_loop::run(
                        self.gw,
                        self.session,
                        self.ctx,
                        tools,
                        obj,
                        &route,
                    ))
                    .await;
                }
            }
        }
        let served = match Box::pin(self.dispatch(&mut obj, &route, ep)).await? {
            Outcome::Ok(s) => s,
            Outcome::Error(s) => {
                let name = s.route.provider.name.clone();
                return Box::pin(self.relay_error(&name, s.plan.dialect, s.resp)).await;
            }
            Outcome::ClientGone => return Ok(()),
        };
        drop(obj);
        let Served { route, plan, resp } = served;
        if plan.stream && resp.is_event_stream() {
            self.relay_stream(resp, &route, &plan).await;
            return Ok(());
        }
        Box::pin(self.relay_whole(resp, &route, &plan)).await
    }

    /// Puts kept reasoning state back into assistant turns the client sent without it (SDK stream
    /// accumulators keep only `role`, `content` and `tool_calls`). Cheap when there is nothing to
    /// do: a substring test on the raw messages.
    async fn restore_reasoning_state(
        &mut self,
        obj: &mut RawObject<'_>,
        needed: filters::reasoning::Needed,
    ) -> Result<(), ApiError> {
        if !self.gw.vault.enabled() {
            return Ok(());
        }
        let Some(raw) = obj.get("messages") else {
            return Ok(());
        };
        if !raw.get().contains("\"tool_calls\"") {
            return Ok(());
        }
        let mut messages: Vec<Value> = serde_json::from_str(raw.get()).map_err(|_| {
            ApiError::of(Code::InvalidRequest, "messages must be an array").param("messages")
        })?;
        let ids = filters::reasoning::ids_missing_state(&messages, needed);
        if ids.is_empty() {
            return Ok(());
        }
        let found = self.gw.vault.get(vault_scope(self.ctx), &ids).await;
        if filters::reasoning::restore(&mut messages, &found, needed) {
            self.ctx.client_messages = Some(raw.to_owned());
            obj.set("messages", &messages);
        }
        Ok(())
    }

    /// The request's parameters on its server span (GenAI conventions), and its messages when
    /// content capture is on.
    fn trace_request(&mut self, obj: &RawObject<'_>) {
        let Some(trace) = self.ctx.trace.as_mut() else {
            return;
        };
        let max_tokens = obj
            .get_as::<u64>("max_completion_tokens")
            .ok()
            .flatten()
            .or_else(|| obj.get_as::<u64>("max_tokens").ok().flatten());
        if let Some(n) = max_tokens {
            trace.set("gen_ai.request.max_tokens", n);
        }
        for (field, key) in [
            ("temperature", "gen_ai.request.temperature"),
            ("top_p", "gen_ai.request.top_p"),
            ("frequency_penalty", "gen_ai.request.frequency_penalty"),
            ("presence_penalty", "gen_ai.request.presence_penalty"),
        ] {
            if let Ok(Some(v)) = obj.get_as::<f64>(field) {
                trace.set(key, v);
            }
        }
        if let Ok(Some(n)) = obj.get_as::<u64>("n") {
            trace.set("gen_ai.request.choice.count", n);
        }
        if trace.capture_content {
            if let Some(m) = obj
                .get("messages")
                .and_then(|m| filters::genai::input_messages(m.get()))
            {
                trace.set("gen_ai.input.messages", m);
            }
        }
    }

    /// A span for the cache lookup that just ended (traced requests with the cache on).
    fn trace_cache_lookup(&mut self, started: std::time::Instant) {
        let (Some(trace), Some(status)) = (self.ctx.trace.as_mut(), self.ctx.cache) else {
            return;
        };
        let i = trace.child(
            "gateway.cache lookup".into(),
            crate::otel::Kind::Internal,
            started,
        );
        let s = &mut trace.children[i];
        s.set("gateway.cache", status.as_str());
        s.end = Some(std::time::Instant::now());
    }

    /// `count_tokens` where the provider cannot count: the door's estimate, marked as one.
    async fn answer_estimate(&mut self, provider: &str, estimate: Option<u64>) {
        let n = estimate.unwrap_or(0);
        let mut h = respond::header(200, "application/json", self.ctx);
        let _ = h.insert_header("x-gateway-provider", provider);
        let _ = h.insert_header("x-gateway-estimate", "true");
        let body = Bytes::from(format!("{{\"input_tokens\":{n}}}"));
        let _ = respond::full(self.session, self.ctx, h, body).await;
    }
}

/// Keeps an answer's reasoning state for the client's next turn.
pub(super) fn keep_reasoning_state(
    gw: &Gateway,
    ctx: &RequestCtx,
    state: &filters::reasoning::TurnState,
) {
    gw.vault.put(vault_scope(ctx), state.entries());
}
