//! The server-side MCP tool loop for `/v1/chat/completions`.
//!
//! Each round is an ordinary upstream call made through the same planning, translation and
//! relay code as a plain request (so every provider and dialect works), with the MCP tools
//! merged into the client's `tools`. While the model's reply calls only gateway tools, the
//! gateway runs them (concurrently), appends the assistant message and one `tool` message per
//! call, and calls the model again, at most `mcp.max_iterations` times. Streams relay every
//! round as it arrives; see `filters::tool_loop` for how rounds are joined into one stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use filters::json_object::RawObject;
use filters::stream_relay::StreamEnd;
use filters::tool_loop::{
    self, client_tool_names, Decision, PendingCall, RoundRelay, RoundSummary, ToolOwnership,
};
use filters::usage::Usage;
use pingora::proxy::Session;
use serde_json::Value;

use super::admission::{limit_error, reserve_for};
use super::client::{unless_client_leaves, ActiveStream, ClientStream};
use super::dispatch::{self, Outcome, Served};
use super::plan::Plan;
use super::relay::{self, gateway_headers, read_openai_body, relay_error};
use super::{keep_reasoning_state, needs_reasoning_state, unix_now, Endpoint};
use crate::errors::{ApiError, Code};
use crate::mcp::{Catalog, McpHub, ToolOutcome};
use crate::proxy::{respond, Gateway, RequestCtx};
use crate::routing::Route;
use crate::upstream::UpstreamResponse;

/// Response header set when the loop stopped at `mcp.max_iterations` (non-streaming).
const LIMIT_HEADER: &str = "x-mcp-max-iterations-reached";
/// Response header with the number of model calls the loop made (non-streaming).
const ROUNDS_HEADER: &str = "x-mcp-rounds";

/// How often a streamed loop sends an SSE comment while tools run, so proxies and load
/// balancers with idle timeouts do not cut a client that is only waiting.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// The hub and its tool catalogue, when this request should run the loop: MCP enabled, no
/// `X-MCP-Bypass`, at least one tool available. The request uses this one snapshot throughout,
/// so names cannot change under it mid-loop.
pub fn active_hub(gw: &Gateway, session: &Session) -> Option<(Arc<McpHub>, Arc<Catalog>)> {
    let hub = gw.mcp.as_ref().filter(|_| gw.cfg.mcp.enable)?;
    let bypass = session
        .req_header()
        .headers
        .get("x-mcp-bypass")
        .is_some_and(|v| !v.is_empty());
    if bypass {
        return None;
    }
    let catalog = hub.catalog();
    catalog
        .has_available_tools()
        .then(|| (hub.clone(), catalog))
}

/// Whether the client's request leaves room for tools (`tool_choice: "none"` does not).
pub fn wants_tools(obj: &RawObject<'_>) -> bool {
    !matches!(obj.get_as::<Value>("tool_choice"), Ok(Some(Value::String(s))) if s == "none")
}

/// Loop-wide state.
struct LoopState {
    owner: ToolOwnership,
    messages: Vec<Value>,
    /// Usage summed over rounds (estimated rounds included, see `estimated`).
    total_usage: Option<Usage>,
    /// Some round reported no usage (cut off, or a provider without stream usage): its tokens
    /// were estimated, so the total is recorded as an estimate.
    estimated: bool,
    /// Tool calls of earlier rounds (index offset for streamed tool-call deltas).
    calls_so_far: u32,
    rounds: u32,
    /// USD of the rounds so far, each at the price of the model that served it (fallbacks may
    /// serve some rounds and not others).
    cost: f64,
    /// `(provider, model)` that served the current round.
    serving: (String, String),
    limiter: Arc<crate::limits::Limiter>,
    /// Reasoning state of a streamed final reply that hands tool calls to the client, for the
    /// vault (the client sends the turn back on its next request).
    final_state: Option<filters::reasoning::TurnState>,
}

impl LoopState {
    fn add_usage(&mut self, u: &Usage) {
        self.cost += self
            .limiter
            .prices
            .cost(&self.serving.0, &self.serving.1, u);
        match &mut self.total_usage {
            Some(t) => t.add(u),
            None => self.total_usage = Some(u.clone()),
        }
    }

    /// A round without a usage report: request bytes / 4 and output bytes / 4, as the plain
    /// path estimates.
    fn add_estimate(&mut self, prompt_bytes: usize, completion_tokens: u64) {
        let prompt = (prompt_bytes as u64).div_ceil(4);
        self.estimated = true;
        self.add_usage(&Usage {
            prompt_tokens: prompt,
            completion_tokens,
            total_tokens: prompt + completion_tokens,
            ..Default::default()
        });
    }
}

pub async fn run(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    (hub, catalog): (Arc<McpHub>, Arc<Catalog>),
    mut obj: RawObject<'_>,
    route: &Route<'_>,
) -> Result<(), ApiError> {
    let client_tools: Vec<Value> = obj
        .get_as("tools")
        .map_err(|_| ApiError::of(Code::InvalidRequest, "tools must be an array").param("tools"))?
        .unwrap_or_default();
    let mut messages: Vec<Value> = obj
        .get_as("messages")
        .map_err(|_| {
            ApiError::of(Code::InvalidRequest, "messages must be an array").param("messages")
        })?
        .unwrap_or_default();
    let stream: bool = obj
        .get_as("stream")
        .map_err(|_| {
            ApiError::of(Code::InvalidRequest, "stream must be a boolean").param("stream")
        })?
        .unwrap_or(false);
    let include_usage = obj
        .get_as::<Value>("stream_options")
        .ok()
        .flatten()
        .and_then(|o| o.get("include_usage").and_then(Value::as_bool))
        .unwrap_or(false);
    // A forced tool choice applies to the first round only, or a forced gateway tool would be
    // called again every round.
    let forced_choice = match obj.get_as::<Value>("tool_choice") {
        Ok(Some(Value::Object(_))) => true,
        Ok(Some(Value::String(s))) => s == "required",
        _ => false,
    };

    let owner = ToolOwnership::new(client_tool_names(&client_tools));
    if tool_loop::drop_unanswered_gateway_calls(&mut messages, &owner) {
        obj.set("messages", &messages);
    }
    let mut tools = client_tools;
    let before = tools.len();
    tools.extend(
        catalog
            .openai_tools()
            .filter(|t| owner.is_gateway_tool(&t.name))
            .map(|t| t.definition.clone()),
    );
    if tools.len() > before {
        obj.set("tools", &tools);
    }
    drop(tools);

    let mut st = LoopState {
        owner,
        messages,
        total_usage: None,
        estimated: false,
        calls_so_far: 0,
        rounds: 0,
        cost: 0.0,
        serving: (route.provider.name.clone(), route.upstream_model.clone()),
        limiter: gw.limiter.clone(),
        final_state: None,
    };
    let max = gw.cfg.mcp.max_iterations;
    let mut out = ClientStream::new(ctx.door.stream_encoder(&route.upstream_model));
    // Model of the round that served last (named in the closing usage chunk).
    let mut last_model = route.upstream_model.clone();
    let result = async {
        for round in 0..max {
            let last = round + 1 == max;
            if round > 0 {
                obj.set("messages", &st.messages);
                if forced_choice {
                    obj.set("tool_choice", "auto");
                }
                admit_round(gw, ctx, route, obj.byte_len()).await?;
            }
            st.rounds += 1;
            ctx.mcp_rounds = st.rounds;
            let served = match dispatch::dispatch(gw, session, ctx, &mut obj, route, Endpoint::Chat)
                .await?
            {
                Outcome::Ok(s) => s,
                Outcome::Error(s) => {
                    if out.headers_sent {
                        relay::error_event_from_upstream(
                            gw, session, ctx, &mut out, &s.plan, s.resp,
                        )
                        .await;
                        return Ok(Flow::Stop);
                    }
                    let name = s.route.provider.name.clone();
                    relay_error(gw, session, ctx, &name, s.plan.dialect, s.resp).await?;
                    return Ok(Flow::Stop);
                }
                // Nothing was generated for this round, but its prompt was sent.
                Outcome::ClientGone => {
                    st.add_estimate(obj.byte_len(), 0);
                    return Ok(Flow::Stop);
                }
            };
            let Served {
                route: served_route,
                plan,
                resp,
            } = served;
            let route = &served_route;
            st.serving = (route.provider.name.clone(), route.upstream_model.clone());
            last_model.clone_from(&route.upstream_model);
            let step = if stream {
                if !out.headers_sent && !out.send_headers(gw, session, ctx, route, &plan).await {
                    return Ok(Flow::Stop);
                }
                if resp.is_event_stream() {
                    stream_round(
                        gw, session, ctx, &mut st, &mut out, resp, route, &plan, last,
                    )
                    .await
                } else {
                    // A provider that answers a stream request with JSON: the client still
                    // gets a stream.
                    whole_as_stream_round(
                        gw, session, ctx, &mut st, &mut out, resp, route, &plan, last,
                    )
                    .await?
                }
            } else {
                whole_round(gw, session, ctx, &mut st, resp, route, &plan, last).await?
            };
            let calls = match step {
                Step::Done(reply) => return Ok(Flow::Reply(reply, false)),
                Step::Limit(reply) => return Ok(Flow::Reply(reply, true)),
                Step::Stop => return Ok(Flow::Stop),
                Step::Run(calls) => calls,
            };
            // The round's response is complete: its load-shedding slot is free while tools run.
            ctx.upstream_hold = None;
            let Some(results) =
                run_tools(gw, session, ctx, &hub, &catalog, &mut out, route, &calls).await
            else {
                return Ok(Flow::Stop);
            };
            for (call, result) in calls.iter().zip(&results) {
                st.messages
                    .push(tool_loop::tool_message(call, &result.content));
            }
        }
        // The last round always ends in Done or Limit.
        Err(ApiError::of(
            Code::InternalError,
            "tool loop ended without a reply",
        ))
    }
    .await;
    ctx.cost_usd = Some(st.cost);
    if st.estimated {
        ctx.usage = None;
        ctx.estimated_usage = st
            .total_usage
            .as_ref()
            .map(|u| (u.prompt_tokens, u.completion_tokens));
    } else {
        ctx.usage = st.total_usage.clone();
    }
    if let Some(state) = st.final_state.take() {
        keep_reasoning_state(gw, ctx, &state);
    }
    let flow = match result {
        Ok(f) => f,
        Err(e) if out.headers_sent => {
            if !out.closed && !ctx.client_gone {
                out.error_event(session, ctx, &e).await;
            }
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    match flow {
        Flow::Stop => {
            if out.headers_sent && !ctx.client_gone && !out.closed {
                finish(&mut out, session, ctx, &last_model, &st, include_usage).await;
            }
        }
        Flow::Reply(Reply::Stream, limit) => {
            if limit {
                // Headers are long gone: say it as an SSE comment before the tail.
                out.keepalive(b": mcp max iterations reached\n\n");
            }
            finish(&mut out, session, ctx, &last_model, &st, include_usage).await;
        }
        Flow::Reply(Reply::Whole { status, body, plan }, limit) => {
            // One round: the provider's usage is the total; the body is only rewritten when
            // it must be (several rounds, or gateway calls to strip).
            let total = (st.rounds > 1).then_some(st.total_usage.as_ref()).flatten();
            let body = match tool_loop::finalize_body(&body, total, &st.owner) {
                Ok(Some(b)) => Bytes::from(b),
                // Unchanged, or not a chat.completion we can edit: as the provider sent it.
                Ok(None) | Err(_) => body,
            };
            ctx.tool_calls
                .extend(filters::usage::tool_calls_from_body(&body));
            let door_body = match relay::door_body(ctx, &plan, body.clone()) {
                Ok(b) => b,
                Err(e) => {
                    crate::proxy::respond::error(session, ctx, &e).await;
                    return Ok(());
                }
            };
            // A reply that hands tool calls to the client: keep its reasoning state.
            if needs_reasoning_state(plan.dialect) {
                if let Some(state) = filters::reasoning::TurnState::from_completion(&body) {
                    keep_reasoning_state(gw, ctx, &state);
                }
            }
            let mut h = respond::header(status, "application/json", ctx);
            gateway_headers(&mut h, ctx, route, &plan);
            // Who served the last round (a fallback may have).
            let _ = h.insert_header("x-gateway-provider", st.serving.0.as_str());
            if let Ok(v) = http::HeaderValue::from_str(&st.serving.1) {
                let _ = h.insert_header("x-gateway-model", v);
            }
            let _ = h.insert_header(ROUNDS_HEADER, st.rounds.to_string());
            if limit {
                let _ = h.insert_header(LIMIT_HEADER, "true");
            }
            if respond::full(session, ctx, h, door_body).await.is_err() {
                ctx.client_gone = true;
            }
        }
    }
    Ok(())
}

/// Admits a round after the first against the caller's TPM and budget, as a request: its
/// prompt (the conversation so far) and completion reserve. A refusal ends the loop with the
/// limit's error (an error event once streaming).
async fn admit_round(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    route: &Route<'_>,
    prompt_bytes: usize,
) -> Result<(), ApiError> {
    let Some(p) = &ctx.principal else {
        return Ok(());
    };
    let reserve = reserve_for(gw, route, prompt_bytes, ctx.completion_reserve);
    match gw.limiter.admit_round(p, reserve).await {
        Ok((adm, headers)) => {
            ctx.round_admissions.push(adm);
            // The round counts no request: keep the request's RPM headers, update the tokens.
            if let Some(h) = &mut ctx.rate_headers {
                h.remaining_tokens = headers.remaining_tokens;
                h.reset = headers.reset;
            }
            Ok(())
        }
        Err(denied) => {
            let (mut err, _) = limit_error(p, denied, reserve.tokens);
            err.message = format!(
                "The MCP tool loop stopped before round {}: {}",
                ctx.mcp_rounds + 1,
                err.message
            );
            ctx.error = Some("limit_reached_in_loop");
            Err(err)
        }
    }
}

enum Flow {
    /// Nothing more to send (client gone, error already answered).
    Stop,
    /// The final reply; `true` when the iteration limit was reached.
    Reply(Reply, bool),
}

enum Reply {
    /// Already streamed; only the tail is missing.
    Stream,
    Whole {
        status: u16,
        body: Bytes,
        plan: Plan,
    },
}

enum Step {
    Run(Vec<PendingCall>),
    Done(Reply),
    Limit(Reply),
    Stop,
}

/// Reads a whole response while watching the client; `Ok(None)` when it hung up.
async fn read_whole(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    resp: UpstreamResponse,
    route: &Route<'_>,
    plan: &Plan,
) -> Result<Option<(u16, Bytes)>, ApiError> {
    let Some(read) =
        unless_client_leaves(session, read_openai_body(gw, ctx, resp, route, plan)).await
    else {
        ctx.client_left();
        return Ok(None);
    };
    let (status, body, _) = read?;
    Ok(Some((status, body)))
}

/// One non-streaming round: read the reply, decide.
#[allow(clippy::too_many_arguments)]
async fn whole_round(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    st: &mut LoopState,
    resp: UpstreamResponse,
    route: &Route<'_>,
    plan: &Plan,
    last: bool,
) -> Result<Step, ApiError> {
    let Some((status, body)) = read_whole(gw, session, ctx, resp, route, plan).await? else {
        st.add_estimate(plan.body.len(), 0);
        return Ok(Step::Stop);
    };
    let whole = |body| Reply::Whole {
        status,
        body,
        plan: plan.clone(),
    };
    let Ok(reply) = tool_loop::parse_reply(&body) else {
        return Ok(Step::Done(whole(body)));
    };
    match &reply.usage {
        Some(u) => st.add_usage(u),
        None => st.add_estimate(plan.body.len(), (body.len() as u64).div_ceil(4)),
    }
    let decision = tool_loop::decide(
        &reply.tool_calls,
        reply.finish_reason.as_deref(),
        &st.owner,
        last,
    );
    match decision {
        Decision::Continue(calls) => {
            ctx.tool_calls.extend(calls.iter().map(|c| c.name.clone()));
            st.messages.push(tool_loop::assistant_message(
                reply.content.as_deref(),
                &calls,
                &reply.carried,
            ));
            Ok(Step::Run(calls))
        }
        Decision::LimitReached => Ok(Step::Limit(whole(body))),
        Decision::Finish => Ok(Step::Done(whole(body))),
    }
}

/// A streamed round whose provider answered with JSON: relayed as a one-chunk stream.
#[allow(clippy::too_many_arguments)]
async fn whole_as_stream_round(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    st: &mut LoopState,
    out: &mut ClientStream,
    resp: UpstreamResponse,
    route: &Route<'_>,
    plan: &Plan,
    last: bool,
) -> Result<Step, ApiError> {
    let Some((_, body)) = read_whole(gw, session, ctx, resp, route, plan).await? else {
        st.add_estimate(plan.body.len(), 0);
        return Ok(Step::Stop);
    };
    let sse = tool_loop::completion_as_sse(&body).ok_or_else(|| {
        ctx.upstream_failure = Some("invalid_response");
        ApiError::of(
            Code::UpstreamInvalidResponse,
            format!(
                "provider {} answered a stream request with a body that is not a chat completion",
                route.provider.name
            ),
        )
    })?;
    let mut relay = RoundRelay::new(st.owner.clone(), st.calls_so_far, last);
    // A complete document: cannot exceed the decoder's limits.
    let _ = relay.feed(&sse, &mut out.buf);
    let summary = relay.finish(&mut out.buf);
    if !out.flush(session, ctx, false).await {
        return Ok(Step::Stop);
    }
    let estimate = (body.len() as u64).div_ceil(4);
    Ok(end_round(ctx, st, summary, plan, estimate, last))
}

/// One streaming round: relay it to the client as it arrives, then decide.
#[allow(clippy::too_many_arguments)]
async fn stream_round(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    st: &mut LoopState,
    out: &mut ClientStream,
    mut resp: UpstreamResponse,
    route: &Route<'_>,
    plan: &Plan,
    last: bool,
) -> Step {
    let provider = route.provider.name.as_str();
    let mut translator = relay::stream_translator(gw, route, plan, true);
    let mut relay = RoundRelay::new(st.owner.clone(), st.calls_so_far, last);
    let mut mid = BytesMut::with_capacity(4096);
    let mut clean = false;
    let _active = ActiveStream::new(gw, provider);
    loop {
        let waited = Instant::now();
        let next = unless_client_leaves(session, resp.read_chunk()).await;
        ctx.upstream_wait += waited.elapsed();
        let Some(next) = next else {
            ctx.client_left();
            st.add_estimate(
                plan.body.len(),
                translator.stats().estimated_completion_tokens(),
            );
            return Step::Stop;
        };
        let end = relay::feed_read(ctx, provider, translator.as_mut(), next, &mut mid);
        let ended = end.is_some();
        if let Some(end) = end {
            clean = end == StreamEnd::Clean;
        }
        if !mid.is_empty() {
            // The translator's output is well-formed SSE of bounded events; the relay keeps
            // partial events itself.
            let _ = relay.feed(&mid, &mut out.buf);
            mid.clear();
        }
        if ended {
            break;
        }
        if !out.flush(session, ctx, false).await {
            st.add_estimate(
                plan.body.len(),
                translator.stats().estimated_completion_tokens(),
            );
            return Step::Stop;
        }
    }
    if clean {
        gw.client.release(resp).await;
    }
    let summary = relay.finish(&mut out.buf);
    if !out.flush(session, ctx, false).await {
        st.add_estimate(
            plan.body.len(),
            translator.stats().estimated_completion_tokens(),
        );
        return Step::Stop;
    }
    let estimate = translator.stats().estimated_completion_tokens();
    end_round(ctx, st, summary, plan, estimate, last)
}

/// After a streamed round: count its usage and calls, decide.
fn end_round(
    ctx: &mut RequestCtx,
    st: &mut LoopState,
    summary: RoundSummary,
    plan: &Plan,
    completion_estimate: u64,
    last: bool,
) -> Step {
    match &summary.usage {
        Some(u) => st.add_usage(u),
        None => st.add_estimate(plan.body.len(), completion_estimate),
    }
    st.calls_so_far += summary.tool_calls.len() as u32;
    ctx.tool_calls.extend(
        summary
            .tool_calls
            .iter()
            .filter_map(|c| c.function.as_ref()?.name.clone()),
    );
    if summary.failed {
        ctx.error = Some("upstream_stream_error");
        return Step::Done(Reply::Stream);
    }
    if summary.too_many_calls {
        return Step::Done(Reply::Stream);
    }
    let decision = tool_loop::decide(
        &summary.tool_calls,
        summary.finish_reason.as_deref(),
        &st.owner,
        last,
    );
    match decision {
        Decision::Continue(calls) => {
            let content = (!summary.content.is_empty()).then_some(summary.content.as_str());
            // The round's reasoning state (signed thinking blocks) goes back with its calls.
            st.messages.push(tool_loop::assistant_message(
                content,
                &calls,
                &summary.carried,
            ));
            Step::Run(calls)
        }
        Decision::LimitReached | Decision::Finish => {
            // The reply goes to the client as it is; if it calls the client's tools, its
            // reasoning state is kept for the client's next turn.
            if needs_reasoning_state(plan.dialect) && !summary.tool_calls.is_empty() {
                st.final_state = Some(filters::reasoning::TurnState {
                    thinking_blocks: summary
                        .carried
                        .get("thinking_blocks")
                        .and_then(serde_json::Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                    calls: summary
                        .tool_calls
                        .iter()
                        .filter_map(|c| {
                            Some((c.id.clone()?, c.extra.get("extra_content").cloned()))
                        })
                        .collect(),
                });
            }
            if matches!(decision, Decision::LimitReached) {
                Step::Limit(Reply::Stream)
            } else {
                Step::Done(Reply::Stream)
            }
        }
    }
}

/// Runs one round's gateway tool calls concurrently; `None` when the client hung up (the
/// calls are dropped, which cancels them). A streamed loop sends keep-alive comments meanwhile.
#[allow(clippy::too_many_arguments)]
async fn run_tools(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    hub: &McpHub,
    catalog: &Catalog,
    out: &mut ClientStream,
    route: &Route<'_>,
    calls: &[PendingCall],
) -> Option<Vec<ToolOutcome>> {
    let started = Instant::now();
    let all = futures::future::join_all(
        calls
            .iter()
            .map(|c| hub.call_tool(catalog, &c.name, &c.arguments)),
    );
    tokio::pin!(all);
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    let results = loop {
        // Wait for the tools until the next keep-alive is due (a stream's client is sent one
        // every KEEPALIVE; a whole answer has nothing to keep alive).
        let next = keepalive.tick();
        let waited = unless_client_leaves(session, async {
            if !out.headers_sent {
                return Some((&mut all).await);
            }
            tokio::select! {
                r = &mut all => Some(r),
                _ = next => None,
            }
        })
        .await;
        match waited {
            None => {
                ctx.client_left();
                return None;
            }
            Some(Some(r)) => break r,
            Some(None) => {
                out.keepalive(b": mcp tools running\n\n");
                if !out.flush(session, ctx, false).await {
                    return None;
                }
            }
        }
    };
    ctx.tool_wait += started.elapsed();
    if let Some(m) = &gw.metrics {
        let provider = route.provider.name.as_str();
        let model = crate::proxy::record::bounded_model(&route.upstream_model);
        for (call, r) in calls.iter().zip(&results) {
            let name = crate::proxy::record::bounded_tool(&call.name);
            let labels = [provider, model, "mcp", name];
            m.tool_call_duration
                .with_label_values(&labels)
                .observe(r.duration.as_secs_f64() * 1000.0);
            match r.error {
                None => m.tool_calls_success.with_label_values(&labels).inc(),
                Some(e) => m
                    .tool_calls_failure
                    .with_label_values(&[provider, model, "mcp", name, e])
                    .inc(),
            }
        }
    }
    Some(results)
}

/// The loop's stream tail: the summed usage chunk (if asked for) and the one `[DONE]`.
async fn finish(
    out: &mut ClientStream,
    session: &mut Session,
    ctx: &mut RequestCtx,
    model: &str,
    st: &LoopState,
    include_usage: bool,
) {
    let id = format!("chatcmpl-{}", ctx.request_id);
    tool_loop::stream_tail(
        &id,
        model,
        unix_now(),
        st.total_usage.as_ref(),
        include_usage,
        &mut out.buf,
    );
    out.flush(session, ctx, true).await;
    ctx.generation = out.generation();
}
