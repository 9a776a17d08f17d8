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
use super::client::gateway_headers;
use super::client::{unless_client_leaves, ActiveStream, ClientStream};
use super::dispatch::{Outcome, Served};
use super::plan::Plan;
use super::relay::{self, read_openai_body};
use super::{keep_reasoning_state, needs_reasoning_state, unix_now, Endpoint, Exchange};
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

/// The gateway's tools one request may use: MCP servers' and A2A agents' snapshots. The
/// request uses these snapshots throughout, so names cannot change under it mid-loop.
pub struct LoopTools {
    mcp: Option<(Arc<McpHub>, Arc<Catalog>)>,
    a2a: Option<(Arc<crate::a2a::A2aHub>, Arc<crate::a2a::A2aCatalog>)>,
}

/// The tools, when this request should run the loop: MCP (`MCP_ENABLE`) or A2A (`A2A_ENABLE`)
/// on with a tool available, no `X-MCP-Bypass` (the client runs its own loop); `X-A2A-Bypass`
/// leaves the agents out.
pub fn active_tools(gw: &Gateway, session: &Session) -> Option<LoopTools> {
    if gw.mcp.is_none() && gw.a2a.is_none() {
        return None;
    }
    let headers = &session.req_header().headers;
    let set = |name: &str| headers.get(name).is_some_and(|v| !v.is_empty());
    if set("x-mcp-bypass") {
        return None;
    }
    let mcp = gw
        .mcp
        .as_ref()
        .filter(|_| gw.cfg.mcp.enable)
        .map(|h| (h.clone(), h.catalog()))
        .filter(|(_, c)| c.has_available_tools());
    let a2a = gw
        .a2a
        .as_ref()
        .filter(|_| gw.cfg.a2a.enable && !set("x-a2a-bypass"))
        .map(|h| (h.clone(), h.catalog()))
        .filter(|(_, c)| !c.tools().is_empty());
    (mcp.is_some() || a2a.is_some()).then_some(LoopTools { mcp, a2a })
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
    tools: LoopTools,
    mut obj: RawObject<'_>,
    route: &Route,
) -> Result<(), ApiError> {
    let mut lp = Loop::new(gw, ctx, tools, &mut obj, route)?;
    let result = lp.rounds(session, ctx, &mut obj).await;
    lp.record(ctx);
    lp.answer(session, ctx, result).await
}

/// One MCP loop: what its rounds share besides the connection and the request's record.
struct Loop<'a> {
    gw: &'a Gateway,
    tools: LoopTools,
    /// The route the client asked for (a round may be served by one of its fallbacks).
    route: &'a Route,
    st: LoopState,
    out: ClientStream,
    /// Model of the round that served last (named in the closing usage chunk).
    last_model: String,
    stream: bool,
    include_usage: bool,
    /// A forced tool choice applies to the first round only, or a forced gateway tool would
    /// be called again every round.
    forced_choice: bool,
    /// The key's tool allowlist (`/mcp` names; empty: all).
    allow: Vec<String>,
    /// Output guardrails on a streamed loop: one window across its rounds.
    guard: Option<filters::guard::StreamGuard>,
}

impl<'a> Loop<'a> {
    /// Reads what the loop needs of the request and offers the gateway's tools beside the
    /// client's.
    fn new(
        gw: &'a Gateway,
        ctx: &RequestCtx,
        loop_tools: LoopTools,
        obj: &mut RawObject<'_>,
        route: &'a Route,
    ) -> Result<Self, ApiError> {
        let client_tools: Vec<Value> = obj
            .get_as("tools")
            .map_err(|_| {
                ApiError::of(Code::InvalidRequest, "tools must be an array").param("tools")
            })?
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
        let forced_choice = match obj.get_as::<Value>("tool_choice") {
            Ok(Some(Value::Object(_))) => true,
            Ok(Some(Value::String(s))) => s == "required",
            _ => false,
        };
        let owner = ToolOwnership::new(client_tool_names(&client_tools));
        if tool_loop::drop_unanswered_gateway_calls(&mut messages, &owner) {
            obj.set("messages", &messages);
        }
        let allow: Vec<String> = ctx
            .caller
            .principal
            .as_ref()
            .map(|p| p.limits.tools.clone())
            .unwrap_or_default();
        let mut tools = client_tools;
        let before = tools.len();
        if let Some((_, catalog)) = &loop_tools.mcp {
            tools.extend(
                catalog
                    .openai_tools()
                    .filter(|t| owner.is_gateway_tool(&t.name))
                    .filter(|t| {
                        crate::mcp::exposed::allowed(&allow, crate::mcp::exposed::exposed_name(t))
                    })
                    .map(|t| t.definition.clone()),
            );
        }
        if let Some((_, catalog)) = &loop_tools.a2a {
            tools.extend(
                catalog
                    .tools()
                    .iter()
                    .filter(|t| owner.is_gateway_tool(&t.name))
                    .filter(|t| crate::mcp::exposed::allowed(&allow, &t.name))
                    .map(|t| t.definition.clone()),
            );
        }
        if tools.len() > before {
            obj.set("tools", &tools);
        }
        Ok(Loop {
            gw,
            tools: loop_tools,
            route,
            st: LoopState {
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
            },
            out: ClientStream::new(ctx.door.stream_encoder(
                &route.upstream_model,
                ctx.responses.as_ref().map(|t| &t.meta),
            )),
            last_model: route.upstream_model.clone(),
            stream,
            include_usage,
            forced_choice,
            allow,
            guard: ctx.output_guard.as_ref().filter(|_| stream).and_then(|p| {
                let set = p.output.clone()?;
                Some(filters::guard::StreamGuard::new(set, p.window))
            }),
        })
    }

    /// Model calls and tool runs until the model answers without gateway tools, the client
    /// leaves, or `mcp.max_iterations` is reached.
    async fn rounds(
        &mut self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        obj: &mut RawObject<'_>,
    ) -> Result<Flow, ApiError> {
        let max = self.gw.cfg.mcp.max_iterations;
        for round in 0..max {
            let last = round + 1 == max;
            if round > 0 {
                obj.set("messages", &self.st.messages);
                if self.forced_choice {
                    obj.set("tool_choice", "auto");
                }
                admit_round(self.gw, ctx, self.route, obj.byte_len()).await?;
            }
            self.st.rounds += 1;
            ctx.mcp_rounds = self.st.rounds;
            let served = match Exchange::of(self.gw, session, ctx)
                .dispatch(obj, self.route, Endpoint::Chat)
                .await?
            {
                Outcome::Ok(s) => s,
                Outcome::Error(s) => {
                    if self.out.headers_sent {
                        Exchange::of(self.gw, session, ctx)
                            .error_event_from_upstream(&mut self.out, &s.plan, s.resp)
                            .await;
                        return Ok(Flow::Stop);
                    }
                    let name = s.route.provider.name.clone();
                    Exchange::of(self.gw, session, ctx)
                        .relay_error(&name, s.plan.dialect, s.resp)
                        .await?;
                    return Ok(Flow::Stop);
                }
                // Nothing was generated for this round, but its prompt was sent.
                Outcome::ClientGone => {
                    self.st.add_estimate(obj.byte_len(), 0);
                    return Ok(Flow::Stop);
                }
            };
            let Served { route, plan, resp } = served;
            self.st.serving = (route.provider.name.clone(), route.upstream_model.clone());
            self.last_model.clone_from(&route.upstream_model);
            let step = if self.stream {
                if !self.out.headers_sent
                    && !self
                        .out
                        .send_headers(self.gw, session, ctx, &route, &plan)
                        .await
                {
                    return Ok(Flow::Stop);
                }
                if resp.is_event_stream() {
                    self.stream_round(session, ctx, resp, &route, &plan, last)
                        .await
                } else {
                    // A provider that answers a stream request with JSON: the client still
                    // gets a stream.
                    self.whole_as_stream_round(session, ctx, resp, &route, &plan, last)
                        .await?
                }
            } else {
                self.whole_round(session, ctx, resp, &route, &plan, last)
                    .await?
            };
            let calls = match step {
                Step::Done(reply) => return Ok(Flow::Reply(reply, false)),
                Step::Limit(reply) => return Ok(Flow::Reply(reply, true)),
                Step::Stop => return Ok(Flow::Stop),
                Step::Run(calls) => calls,
            };
            // The round's response is complete: its load-shedding slot is free while tools run.
            ctx.upstream.hold = None;
            let Some(results) = self.run_tools(session, ctx, &route, &calls).await else {
                return Ok(Flow::Stop);
            };
            for (call, result) in calls.iter().zip(&results) {
                self.st
                    .messages
                    .push(tool_loop::tool_message(call, &result.content));
            }
        }
        // The last round always ends in Done or Limit.
        Err(ApiError::of(
            Code::InternalError,
            "tool loop ended without a reply",
        ))
    }

    /// The loop's usage and cost into the request's record (summed over rounds; an estimate
    /// if any round had to be estimated).
    fn record(&mut self, ctx: &mut RequestCtx) {
        let st = &mut self.st;
        ctx.answer.cost_usd = Some(st.cost);
        if st.estimated {
            ctx.answer.usage = None;
            ctx.answer.estimated_usage = st
                .total_usage
                .as_ref()
                .map(|u| (u.prompt_tokens, u.completion_tokens));
        } else {
            ctx.answer.usage = st.total_usage.clone();
        }
        if let Some(state) = st.final_state.take() {
            keep_reasoning_state(self.gw, ctx, &state);
        }
    }

    /// The end of the answer: the stream's tail (or an error event), or the whole reply.
    async fn answer(
        &mut self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        result: Result<Flow, ApiError>,
    ) -> Result<(), ApiError> {
        let flow = match result {
            Ok(f) => f,
            Err(e) if self.out.headers_sent => {
                if !self.out.closed && !ctx.answer.client_gone {
                    self.out.error_event(session, ctx, &e).await;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match flow {
            Flow::Stop => {
                if self.out.headers_sent && !ctx.answer.client_gone && !self.out.closed {
                    self.finish(session, ctx).await;
                }
            }
            Flow::Reply(Reply::Stream, limit) => {
                if limit {
                    // Headers are long gone: say it as an SSE comment before the tail.
                    self.out.keepalive(b": mcp max iterations reached\n\n");
                }
                self.finish(session, ctx).await;
            }
            Flow::Reply(Reply::Whole { status, body, plan }, limit) => {
                self.whole_reply(session, ctx, status, body, &plan, limit)
                    .await;
            }
        }
        Ok(())
    }

    /// A non-streamed loop's reply: the last round's body with the loop's usage, headers
    /// naming who served it and how many rounds it took.
    async fn whole_reply(
        &mut self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: u16,
        body: Bytes,
        plan: &Plan,
        limit: bool,
    ) {
        let st = &self.st;
        // One round: the provider's usage is the total; the body is only rewritten when it
        // must be (several rounds, or gateway calls to strip).
        let total = (st.rounds > 1).then_some(st.total_usage.as_ref()).flatten();
        let body = match tool_loop::finalize_body(&body, total, &st.owner) {
            Ok(Some(b)) => Bytes::from(b),
            // Unchanged, or not a chat.completion we can edit: as the provider sent it.
            Ok(None) | Err(_) => body,
        };
        // Output guardrails see the loop's answer like any other (before it is sent).
        let body = match ctx.output_guard.clone() {
            Some(p) if status == 200 => super::guarded::check_whole(self.gw, ctx, &p, body).await.0,
            _ => body,
        };
        ctx.answer
            .tool_calls
            .extend(filters::usage::tool_calls_from_body(&body));
        if let Some(trace) = ctx.trace.as_mut() {
            ctx.answer.finish_reasons = filters::genai::finish_reasons(&body);
            if trace.capture_content {
                if let Some(out) = filters::genai::output_messages(&body) {
                    trace.set("gen_ai.output.messages", out);
                }
            }
        }
        let door_body = match relay::door_body(ctx, plan, body.clone()) {
            Ok(b) => b,
            Err(e) => {
                respond::error(session, ctx, &e).await;
                return;
            }
        };
        // A reply that hands tool calls to the client: keep its reasoning state.
        if needs_reasoning_state(plan.dialect) {
            if let Some(state) = filters::reasoning::TurnState::from_completion(&body) {
                keep_reasoning_state(self.gw, ctx, &state);
            }
        }
        let mut map = respond::header_map("application/json", ctx);
        gateway_headers(&mut map, ctx, self.route, plan);
        // Who served the last round (a fallback may have).
        if let Ok(v) = http::HeaderValue::from_str(&st.serving.0) {
            map.insert(respond::X_GATEWAY_PROVIDER, v);
        }
        if let Ok(v) = http::HeaderValue::from_str(&st.serving.1) {
            map.insert(respond::X_GATEWAY_MODEL, v);
        }
        let mut h = respond::finish_header(status, map, ctx);
        let _ = h.insert_header(ROUNDS_HEADER, st.rounds.to_string());
        if limit {
            let _ = h.insert_header(LIMIT_HEADER, "true");
        }
        if respond::full(session, ctx, h, door_body).await.is_err() {
            ctx.answer.client_gone = true;
        }
    }

    /// The stream's tail: the summed usage chunk (if asked for) and the one `[DONE]`.
    async fn finish(&mut self, session: &mut Session, ctx: &mut RequestCtx) {
        let id = format!("chatcmpl-{}", ctx.request_id);
        tool_loop::stream_tail(
            &id,
            &self.last_model,
            unix_now(),
            self.st.total_usage.as_ref(),
            self.include_usage,
            &mut self.out.buf,
        );
        self.out.flush(session, ctx, true).await;
        ctx.answer.generation = self.out.generation();
    }

    /// One non-streaming round: read the reply, decide.
    async fn whole_round(
        &mut self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        resp: UpstreamResponse,
        route: &Route,
        plan: &Plan,
        last: bool,
    ) -> Result<Step, ApiError> {
        let Some((status, body)) = read_whole(self.gw, session, ctx, resp, route, plan).await?
        else {
            self.st.add_estimate(plan.body.len(), 0);
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
            Some(u) => self.st.add_usage(u),
            None => self
                .st
                .add_estimate(plan.body.len(), (body.len() as u64).div_ceil(4)),
        }
        let decision = tool_loop::decide(
            &reply.tool_calls,
            reply.finish_reason.as_deref(),
            &self.st.owner,
            last,
        );
        match decision {
            Decision::Continue(calls) => {
                ctx.answer
                    .tool_calls
                    .extend(calls.iter().map(|c| c.name.clone()));
                self.st.messages.push(tool_loop::assistant_message(
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
    async fn whole_as_stream_round(
        &mut self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        resp: UpstreamResponse,
        route: &Route,
        plan: &Plan,
        last: bool,
    ) -> Result<Step, ApiError> {
        let Some((_, body)) = read_whole(self.gw, session, ctx, resp, route, plan).await? else {
            self.st.add_estimate(plan.body.len(), 0);
            return Ok(Step::Stop);
        };
        let sse = tool_loop::completion_as_sse(&body).ok_or_else(|| {
            ctx.upstream.failure = Some("invalid_response");
            ApiError::of(
                Code::UpstreamInvalidResponse,
                format!(
                    "provider {} answered a stream request with a body that is not a chat completion",
                    route.provider.name
                ),
            )
        })?;
        let mut relay = RoundRelay::new(self.st.owner.clone(), self.st.calls_so_far, last);
        // A complete document: cannot exceed the decoder's limits.
        let _ = relay.feed(&sse, &mut self.out.buf);
        let summary = relay.finish(&mut self.out.buf);
        if !self.out.flush(session, ctx, false).await {
            return Ok(Step::Stop);
        }
        let estimate = (body.len() as u64).div_ceil(4);
        Ok(self.end_round(ctx, summary, plan, estimate, last))
    }

    /// One streaming round: relay it to the client as it arrives, then decide.
    async fn stream_round(
        &mut self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut resp: UpstreamResponse,
        route: &Route,
        plan: &Plan,
        last: bool,
    ) -> Step {
        let provider = route.provider.name.as_str();
        let mut translator = relay::stream_translator(self.gw, route, plan, true);
        let mut relay = RoundRelay::new(self.st.owner.clone(), self.st.calls_so_far, last);
        let mut mid = BytesMut::with_capacity(4096);
        let mut clean = false;
        let _active = ActiveStream::new(self.gw, provider);
        loop {
            let waited = Instant::now();
            let next = unless_client_leaves(session, resp.read_chunk()).await;
            ctx.upstream.wait += waited.elapsed();
            let Some(next) = next else {
                ctx.client_left();
                self.st.add_estimate(
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
            if let Some(g) = &mut self.guard {
                // Checked before the round relay sees it; a round's finish chunk releases what
                // the window holds, so nothing is held across rounds.
                let input = mid.split();
                if g.feed(&input, &mut mid) == filters::guard::Verdict::Blocked {
                    // Ended with content_filter (and its own [DONE]): nothing more is read.
                    self.out.buf.extend_from_slice(&mid);
                    if let Some(m) = &self.gw.metrics {
                        m.guardrail_actions
                            .with_label_values(&["output_patterns", "block"])
                            .inc();
                    }
                    self.out.flush(session, ctx, true).await;
                    self.st.add_estimate(
                        plan.body.len(),
                        translator.stats().estimated_completion_tokens(),
                    );
                    return Step::Stop;
                }
            }
            if !mid.is_empty() {
                // The translator's output is well-formed SSE of bounded events; the relay keeps
                // partial events itself.
                let _ = relay.feed(&mid, &mut self.out.buf);
                mid.clear();
            }
            if ended {
                break;
            }
            if !self.out.flush(session, ctx, false).await {
                self.st.add_estimate(
                    plan.body.len(),
                    translator.stats().estimated_completion_tokens(),
                );
                return Step::Stop;
            }
        }
        if clean {
            self.gw.client.release(resp).await;
        }
        let summary = relay.finish(&mut self.out.buf);
        if !self.out.flush(session, ctx, false).await {
            self.st.add_estimate(
                plan.body.len(),
                translator.stats().estimated_completion_tokens(),
            );
            return Step::Stop;
        }
        let estimate = translator.stats().estimated_completion_tokens();
        self.end_round(ctx, summary, plan, estimate, last)
    }

    /// After a streamed round: count its usage and calls, decide.
    fn end_round(
        &mut self,
        ctx: &mut RequestCtx,
        summary: RoundSummary,
        plan: &Plan,
        completion_estimate: u64,
        last: bool,
    ) -> Step {
        match &summary.usage {
            Some(u) => self.st.add_usage(u),
            None => self.st.add_estimate(plan.body.len(), completion_estimate),
        }
        self.st.calls_so_far += summary.tool_calls.len() as u32;
        ctx.answer.tool_calls.extend(
            summary
                .tool_calls
                .iter()
                .filter_map(|c| c.function.as_ref()?.name.clone()),
        );
        if summary.failed {
            ctx.answer.error = Some("upstream_stream_error");
            return Step::Done(Reply::Stream);
        }
        if summary.too_many_calls {
            return Step::Done(Reply::Stream);
        }
        let decision = tool_loop::decide(
            &summary.tool_calls,
            summary.finish_reason.as_deref(),
            &self.st.owner,
            last,
        );
        match decision {
            Decision::Continue(calls) => {
                let content = (!summary.content.is_empty()).then_some(summary.content.as_str());
                // The round's reasoning state (signed thinking blocks) goes back with its calls.
                self.st.messages.push(tool_loop::assistant_message(
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
                    self.st.final_state = Some(filters::reasoning::TurnState {
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
    async fn run_tools(
        &mut self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        calls: &[PendingCall],
    ) -> Option<Vec<ToolOutcome>> {
        let started = Instant::now();
        let allow = &self.allow;
        let tools = &self.tools;
        let all = futures::future::join_all(calls.iter().map(|c| async move {
            // A tool the key may not use was never offered: as unknown as any other name.
            let unknown = || crate::mcp::ToolOutcome {
                content: format!("Error: unknown tool {:?}", c.name),
                error: Some("unknown_tool"),
                duration: Duration::ZERO,
            };
            if c.name.starts_with(crate::a2a::TOOL_PREFIX) {
                let Some((hub, catalog)) = &tools.a2a else {
                    return unknown();
                };
                return match catalog.get(&c.name) {
                    Some(t) if crate::mcp::exposed::allowed(allow, &t.name) => {
                        hub.call(t, &c.arguments).await
                    }
                    _ => unknown(),
                };
            }
            let Some((hub, catalog)) = &tools.mcp else {
                return unknown();
            };
            let permitted = catalog.get(&c.name).is_some_and(|t| {
                crate::mcp::exposed::allowed(allow, crate::mcp::exposed::exposed_name(t))
            });
            if !permitted {
                return unknown();
            }
            hub.call_tool(catalog, &c.name, &c.arguments).await
        }));
        tokio::pin!(all);
        let mut keepalive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        let results = loop {
            // Wait for the tools until the next keep-alive is due (a stream's client is sent one
            // every KEEPALIVE; a whole answer has nothing to keep alive).
            let next = keepalive.tick();
            let waited = unless_client_leaves(session, async {
                if !self.out.headers_sent {
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
                    self.out.keepalive(b": mcp tools running\n\n");
                    if !self.out.flush(session, ctx, false).await {
                        return None;
                    }
                }
            }
        };
        ctx.tool_wait += started.elapsed();
        if let Some(trace) = ctx.trace.as_mut() {
            trace_tool_calls(trace, started, calls, &results);
        }
        if let Some(m) = &self.gw.metrics {
            let provider = route.provider.name.as_str();
            let model = crate::proxy::record::bounded_model(&route.upstream_model);
            for (call, r) in calls.iter().zip(&results) {
                let name = crate::proxy::record::bounded_tool(&call.name);
                let labels = [provider, model, crate::metrics::tool_type(&call.name), name];
                m.tool_call_duration
                    .with_label_values(&labels)
                    .observe(r.duration.as_secs_f64() * 1000.0);
                match r.error {
                    None => m.tool_calls_success.with_label_values(&labels).inc(),
                    Some(e) => m
                        .tool_calls_failure
                        .with_label_values(&[
                            provider,
                            model,
                            crate::metrics::tool_type(&call.name),
                            name,
                            e,
                        ])
                        .inc(),
                }
            }
        }
        Some(results)
    }
}

/// Admits a round after the first against the caller's TPM and budget, as a request: its
/// prompt (the conversation so far) and completion reserve. A refusal ends the loop with the
/// limit's error (an error event once streaming).
async fn admit_round(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    route: &Route,
    prompt_bytes: usize,
) -> Result<(), ApiError> {
    let Some(p) = &ctx.caller.principal else {
        return Ok(());
    };
    let reserve = reserve_for(gw, route, prompt_bytes, ctx.caller.completion_reserve);
    // The key's team is asked first (its round admission is given back with the others).
    let team = p.team_principal();
    if let Some(t) = &team {
        match gw.limiter.admit_round(t, reserve).await {
            Ok((adm, _)) => ctx.caller.round_admissions.push(adm),
            Err(denied) => {
                let (mut err, _) = limit_error(t, denied, reserve.tokens);
                err.message = format!(
                    "The MCP tool loop stopped before round {}: {}",
                    ctx.mcp_rounds + 1,
                    err.message
                );
                ctx.answer.error = Some("limit_reached_in_loop");
                return Err(err);
            }
        }
    }
    match gw.limiter.admit_round(p, reserve).await {
        Ok((adm, headers)) => {
            ctx.caller.round_admissions.push(adm);
            // The round counts no request: keep the request's RPM headers, update the tokens.
            if let Some(h) = &mut ctx.caller.rate_headers {
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
            ctx.answer.error = Some("limit_reached_in_loop");
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
    route: &Route,
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

/// An `execute_tool` span per tool call the gateway ran (they run together, from `started`).
fn trace_tool_calls(
    trace: &mut crate::otel::Trace,
    started: Instant,
    calls: &[PendingCall],
    results: &[ToolOutcome],
) {
    // The round that asked for the tools was read before they started.
    trace.end_open_attempt(started);
    for (call, r) in calls.iter().zip(results) {
        let i = trace.child(
            format!("execute_tool {}", call.name),
            crate::otel::Kind::Internal,
            started,
        );
        let capture = trace.capture_content;
        let s = &mut trace.children[i];
        s.set("gen_ai.operation.name", "execute_tool");
        s.set("gen_ai.tool.name", call.name.as_str());
        s.set("gen_ai.tool.call.id", call.id.as_str());
        // Run by the gateway on the model's behalf (the conventions' "extension").
        s.set("gen_ai.tool.type", "extension");
        if call.name.starts_with(crate::a2a::TOOL_PREFIX) {
            s.set("gateway.tool.source", "a2a");
        } else {
            s.set("gateway.tool.source", "mcp");
            s.set("mcp.method.name", "tools/call");
        }
        if capture {
            s.set("gen_ai.tool.call.arguments", call.arguments.as_str());
            s.set("gen_ai.tool.call.result", r.content.as_str());
        }
        if let Some(e) = r.error {
            s.set("error.type", e);
            s.error = Some(e.to_string());
        }
        s.end = Some(started + r.duration);
    }
}
