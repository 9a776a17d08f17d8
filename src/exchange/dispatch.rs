//! Who serves a request: retries within the routed provider's pool, then the alias's fallback
//! chain. Every decision here happens before the first byte reaches the client; once a response
//! is relayed, a failure ends it (error event and `[DONE]` for streams) and is never retried.
//!
//! What is retried (README "Resilience" has the table): connect errors, first-byte timeouts,
//! 408, 429 and 5xx. A connection reset after the request was written is the answer (502: it
//! may have been processed), and so is every other status (400, 401, 403, 404, 413, 422, ...).

use std::time::{Duration, Instant};

use filters::json_object::RawObject;
use http::{HeaderName, HeaderValue, Method};

use super::client::unless_client_leaves;
use super::plan::{plan_call, Plan};
use super::Endpoint;
use super::Exchange;
use crate::errors::{ApiError, Code};
use crate::pool::Pool;
use crate::proxy::{Gateway, RequestCtx};
use crate::routing::Route;
use crate::upstream::{Timeouts, UpstreamError, UpstreamRequest, UpstreamResponse};

/// A response from the backend that served the request.
pub(super) struct Served {
    pub(super) route: Route,
    pub(super) plan: Plan,
    pub(super) resp: UpstreamResponse,
}

pub(super) enum Outcome {
    /// A 2xx response, ready to relay.
    Ok(Served),
    /// The final answer is an upstream error response (relay its status and body).
    Error(Served),
    /// The client hung up while waiting.
    ClientGone,
}

/// What one attempt came to. (`Done` is large, but it is moved once per attempt; boxing it
/// would cost an allocation on every request.)
#[allow(clippy::large_enum_variant)]
enum Attempt {
    Done(Outcome),
    /// Worth another try; `Retry-After` if the upstream gave one.
    Retry {
        reason: &'static str,
        retry_after: Option<Duration>,
        error: Failure,
    },
    /// This provider cannot serve now (shed, no healthy backend): next fallback.
    Skip(ApiError),
    /// The total deadline passed.
    Deadline,
    /// The answer, with no further attempt anywhere (the request may have been processed).
    Fatal(ApiError),
}

/// The last failure, kept to answer with if nothing succeeds.
enum Failure {
    Response(Box<Served>),
    Error(ApiError),
}

/// The route of fallback `name` of `route`'s alias, if the caller may use it and it can serve.
fn fallback(gw: &Gateway, ctx: &RequestCtx, route: &Route, name: &str) -> Result<Route, ApiError> {
    let mut candidate = gw.router.route(name, None)?;
    // The alias's defaults and system prompt apply to its fallbacks too.
    candidate.alias = route.alias.clone();
    fallback_allowed(gw, ctx, &candidate)?;
    let provider = &candidate.provider;
    if !provider.configured {
        return Err(super::not_configured(&provider.name));
    }
    let missing_key = gw
        .pools
        .get(&provider.name)
        .map_or(provider.missing_key(), |p| p.missing_key());
    if missing_key {
        return Err(ApiError::of(
            Code::ProviderNotConfigured,
            format!("Provider {} has no API key configured", provider.name),
        ));
    }
    Ok(candidate)
}

/// A fallback must pass the caller's checks like the primary: its model list (an alias entry
/// covers the alias's fallbacks) and, for a budget, a price.
fn fallback_allowed(gw: &Gateway, ctx: &RequestCtx, candidate: &Route) -> Result<(), ApiError> {
    let Some(p) = &ctx.caller.principal else {
        return Ok(());
    };
    let requested = ctx.model.as_deref().unwrap_or("");
    super::admission::model_permitted(gw, p, requested, candidate, || {
        format!(
            "The fallback {}/{}",
            candidate.provider.name, candidate.upstream_model
        )
    })
}

/// Why a pool gave up.
enum Stop {
    Failed(Failure),
    /// The request's total time ran out: no more attempts anywhere.
    Deadline,
    /// Answer with this; no fallback.
    Fatal(ApiError),
}

fn deadline_passed(ctx: &RequestCtx) -> bool {
    ctx.upstream
        .deadline
        .is_some_and(|d| tokio::time::Instant::now() >= d)
}

fn deadline_error() -> ApiError {
    ApiError::of(
        Code::Deadline,
        "the request ran out of its total time (timeouts.total)",
    )
}

/// Timeouts of a call: alias over provider over `client.*`, and the request's deadline.
fn timeouts_for(gw: &Gateway, ctx: &RequestCtx, route: &Route, pool: &Pool) -> Timeouts {
    let t = route
        .alias
        .as_ref()
        .map(|a| a.timeouts)
        .unwrap_or_default()
        .over(pool.timeouts);
    let c = &gw.cfg.client;
    Timeouts {
        connect: t.connect.map_or(c.connect_timeout.get(), |d| d.get()),
        first_byte: t.first_byte.map_or(c.first_byte_timeout.get(), |d| d.get()),
        stream_idle: t
            .stream_idle
            .map_or(c.stream_idle_timeout.get(), |d| d.get()),
        deadline: ctx.upstream.deadline,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is treated as absent).
fn retry_after(resp: &UpstreamResponse) -> Option<Duration> {
    resp.header_str("retry-after")?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Full jitter: a random wait up to `backoff * 2^attempt` (capped at `max_backoff`).
fn backoff(cfg: &crate::config::resilience::RetryConfig, attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let cap = cfg
        .backoff
        .get()
        .saturating_mul(1 << attempt.min(16))
        .min(cfg.max_backoff.get());
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let r = h.finish();
    let nanos = cap.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(r % nanos)
}

impl<'g> Exchange<'g, '_> {
    pub(super) async fn dispatch(
        &mut self,
        obj: &mut RawObject<'_>,
        route: &Route,
        ep: Endpoint,
    ) -> Result<Outcome, ApiError> {
        let fallbacks: &[String] = route.alias.as_ref().map_or(&[], |a| &a.fallbacks);
        // The request as the client sent it, for re-planning against each fallback.
        let original = (!fallbacks.is_empty()).then(|| obj.clone());
        let mut last: Option<Failure> = None;
        // A fallback that cannot be used (unknown, no key, cannot express the request) must not
        // replace the real upstream failure as the answer.
        let note = |last: &mut Option<Failure>, e: ApiError| {
            if last.is_none() {
                *last = Some(Failure::Error(e));
            }
        };
        for i in 0..=fallbacks.len() {
            if deadline_passed(self.ctx) {
                return Err(deadline_error());
            }
            let candidate = if i == 0 {
                route.clone()
            } else {
                match fallback(self.gw, self.ctx, route, &fallbacks[i - 1]) {
                    Ok(r) => r,
                    Err(e) => {
                        note(&mut last, e);
                        continue;
                    }
                }
            };
            // Without fallbacks the client's object is rewritten in place (no copy); with them,
            // every candidate is planned from a copy and `obj` stays as the client sent it (the
            // MCP loop reuses it for its next round).
            let mut body = match &original {
                Some(o) => o.clone(),
                None => std::mem::take(obj),
            };
            // State the vault added for a native primary is not for other dialects (strict
            // OpenAI-compatible servers refuse unknown message fields).
            if !super::needs_reasoning_state(candidate.provider.dialect) {
                if let Some(m) = &self.ctx.client_messages {
                    body.set_raw("messages", m.clone());
                }
            }
            let plan = plan_call(
                self.gw,
                self.ctx.door,
                self.ctx.original.as_deref(),
                &mut body,
                &candidate,
                ep,
            );
            if original.is_none() {
                *obj = body;
            }
            let plan = match plan {
                Ok(p) => p,
                // The client's request is bad for the primary: that is the answer. A fallback that
                // cannot express it is skipped.
                Err(e) if i == 0 => return Err(e),
                Err(e) => {
                    note(&mut last, e);
                    continue;
                }
            };
            if i > 0 {
                log::info!(
                    "request {}: falling back to {}/{}",
                    self.ctx.request_id,
                    candidate.provider.name,
                    candidate.upstream_model
                );
                if let Some(m) = &self.gw.metrics {
                    m.fallbacks
                        .with_label_values(&[&route.provider.name, &candidate.provider.name])
                        .inc();
                }
            }
            self.ctx.upstream.provider = Some(candidate.provider.name.clone());
            self.ctx.upstream.model = Some(candidate.upstream_model.clone());
            match self.try_pool(candidate, plan).await {
                Ok(outcome) => return Ok(outcome),
                Err(Stop::Deadline) => return Err(deadline_error()),
                Err(Stop::Fatal(e)) => return Err(e),
                Err(Stop::Failed(f)) => {
                    // Keep an upstream response over a gateway-side error.
                    if matches!(f, Failure::Response(_))
                        || !matches!(last, Some(Failure::Response(_)))
                    {
                        last = Some(f);
                    }
                }
            }
        }
        match last {
            Some(Failure::Response(s)) => {
                // The answer is this candidate's: logs, metrics and the charge name it.
                self.ctx.upstream.provider = Some(s.route.provider.name.clone());
                self.ctx.upstream.model = Some(s.route.upstream_model.clone());
                Ok(Outcome::Error(*s))
            }
            Some(Failure::Error(e)) => Err(e),
            None => Err(ApiError::of(
                Code::UpstreamError,
                "no provider could serve the request",
            )),
        }
    }

    /// Tries one provider's pool up to its retry budget.
    async fn try_pool(&mut self, route: Route, plan: Plan) -> Result<Outcome, Stop> {
        let Some(pool) = self.gw.pools.get(&route.provider.name) else {
            return Err(Stop::Failed(Failure::Error(ApiError::of(
                Code::UpstreamError,
                format!("provider {} has no backends", route.provider.name),
            ))));
        };
        if self.ctx.upstream.deadline.is_none() {
            let total = route
                .alias
                .as_ref()
                .and_then(|a| a.timeouts.total)
                .or(pool.timeouts.total)
                .or(self.gw.cfg.client.total_timeout);
            self.ctx.upstream.deadline =
                total.map(|d| tokio::time::Instant::from_std(self.ctx.start) + d.get());
        }
        let timeouts = timeouts_for(self.gw, self.ctx, &route, &pool);
        let mut tried: Vec<usize> = Vec::with_capacity(2);
        let mut last: Option<Failure> = None;
        let attempts = pool.retry.attempts.max(1);
        for attempt in 0..attempts {
            if deadline_passed(self.ctx) {
                return Err(Stop::Deadline);
            }
            let (reason, retry_after, error) = match self
                .attempt_once(&pool, &mut tried, &route, &plan, &timeouts)
                .await
            {
                Attempt::Done(o) => return Ok(o),
                Attempt::Deadline => return Err(Stop::Deadline),
                Attempt::Fatal(e) => return Err(Stop::Fatal(e)),
                // Nothing left to try here: the last real failure says more than "no backend".
                Attempt::Skip(e) => {
                    return Err(Stop::Failed(last.unwrap_or(Failure::Error(e))));
                }
                Attempt::Retry {
                    reason,
                    retry_after,
                    error,
                } => (reason, retry_after, error),
            };
            last = Some(error);
            if attempt + 1 == attempts {
                break;
            }
            let mut wait = backoff(&pool.retry, attempt);
            if let Some(ra) = retry_after {
                // Another backend may answer at once; the same one only after Retry-After, and
                // only if that is worth waiting for (else the next fallback, if any).
                if !pool.has_untried(&tried) {
                    if ra > pool.retry.max_retry_after.get() {
                        break;
                    }
                    wait = wait.max(ra);
                }
            }
            if let Some(d) = self.ctx.upstream.deadline {
                if tokio::time::Instant::now() + wait >= d {
                    break;
                }
            }
            if let Some(m) = &self.gw.metrics {
                m.upstream_retries
                    .with_label_values(&[&pool.name, reason])
                    .inc();
            }
            if unless_client_leaves(self.session, tokio::time::sleep(wait))
                .await
                .is_none()
            {
                self.ctx.client_left();
                return Ok(Outcome::ClientGone);
            }
        }
        Err(Stop::Failed(last.unwrap_or_else(|| {
            Failure::Error(ApiError::of(Code::UpstreamError, "no attempt was made"))
        })))
    }

    /// One call to one backend of `pool`.
    async fn attempt_once(
        &mut self,
        pool: &std::sync::Arc<Pool>,
        tried: &mut Vec<usize>,
        route: &Route,
        plan: &Plan,
        timeouts: &Timeouts,
    ) -> Attempt {
        // The previous round's (MCP loop) permit and in-flight count end here, before a new one is
        // taken: a request never holds two.
        self.ctx.upstream.hold = None;
        let Some((i, mut in_flight)) = pool.select(tried) else {
            let mut e = ApiError::of(
                Code::NoHealthyBackend,
                format!("provider {}: every backend is unavailable", pool.name),
            );
            e.retry_after = Some(pool.retry_in().unwrap_or(Duration::from_secs(1)));
            return Attempt::Skip(e);
        };
        tried.push(i);
        let backend = in_flight.slot().provider.clone();
        let permit = match &pool.shed {
            None => None,
            Some(shed) => match shed.acquire().await {
                Ok(p) => Some(p),
                Err(_) => {
                    // Dropping `in_flight` releases a claimed probe.
                    if let Some(m) = &self.gw.metrics {
                        m.shed.with_label_values(&[&pool.name]).inc();
                    }
                    let mut e = ApiError::of(
                        Code::Overloaded,
                        format!(
                            "provider {} is at its concurrency limit; retry shortly",
                            pool.name
                        ),
                    );
                    e.retry_after = Some(shed.retry_after());
                    return Attempt::Skip(e);
                }
            },
        };
        let span = self.attempt_span(route, &backend);
        match self.send_to(&backend, plan, timeouts, span).await {
            Ok(None) => Attempt::Done(Outcome::ClientGone),
            Err(UpstreamError::Deadline) => Attempt::Deadline,
            Err(e) => {
                let err = ApiError::upstream(&e, &pool.name);
                let reason = match e {
                    // Nothing was sent.
                    UpstreamError::Connect(_) => "connect",
                    UpstreamError::FirstByteTimeout => "timeout",
                    // Closed or reset after the request was sent: it may have run (and been
                    // billed); not repeated. The backend still counts it as a failure.
                    _ => {
                        in_flight.failure();
                        return Attempt::Fatal(err);
                    }
                };
                in_flight.failure();
                Attempt::Retry {
                    reason,
                    retry_after: None,
                    error: Failure::Error(err),
                }
            }
            Ok(Some(resp)) => {
                let status = resp.status();
                let retry_after = retry_after(&resp);
                let served = Served {
                    route: route.clone(),
                    plan: plan.clone(),
                    resp,
                };
                match status {
                    429 => {
                        // Alive, just busy: not a failure of the backend, but left alone for its
                        // Retry-After while others can serve.
                        in_flight.rate_limited(retry_after);
                        Attempt::Retry {
                            reason: "status_429",
                            retry_after,
                            error: Failure::Response(Box::new(served)),
                        }
                    }
                    408 | 500..=599 => {
                        in_flight.failure();
                        Attempt::Retry {
                            reason: "status_5xx",
                            retry_after,
                            error: Failure::Response(Box::new(served)),
                        }
                    }
                    s => {
                        in_flight.success();
                        self.ctx.upstream.hold = Some((permit, in_flight));
                        self.ctx.upstream.provider = Some(route.provider.name.clone());
                        self.ctx.upstream.model = Some(route.upstream_model.clone());
                        if (200..300).contains(&s) {
                            // Recovered: earlier attempts' failures are not this request's outcome.
                            self.ctx.upstream.failure = None;
                            Attempt::Done(Outcome::Ok(served))
                        } else {
                            Attempt::Done(Outcome::Error(served))
                        }
                    }
                }
            }
        }
    }

    /// A client span for one attempt (traced requests only). An attempt still open (an earlier
    /// round of the MCP loop, whose answer has been read by now) ends here.
    fn attempt_span(
        &mut self,
        route: &Route,
        backend: &crate::providers::Provider,
    ) -> Option<usize> {
        let op = filters::genai::operation(self.ctx.route).unwrap_or("chat");
        let trace = self.ctx.trace.as_mut()?;
        let now = Instant::now();
        trace.end_open_attempt(now);
        let i = trace.child(
            format!("{op} {}", route.upstream_model),
            crate::otel::Kind::Client,
            now,
        );
        let s = &mut trace.children[i];
        s.set("gen_ai.operation.name", op);
        s.set(
            "gen_ai.provider.name",
            filters::genai::provider_name(&route.provider.name),
        );
        s.set("gen_ai.request.model", route.upstream_model.as_str());
        s.set("server.address", backend.host.as_str());
        s.set("server.port", i64::from(backend.port));
        Some(i)
    }

    /// Ends an attempt's span, unless it is the answer being relayed (2xx): that one stays open
    /// until the answer has been read.
    fn end_attempt(&mut self, span: Option<usize>, status: Option<u16>, error: Option<&str>) {
        let (Some(i), Some(trace)) = (span, self.ctx.trace.as_mut()) else {
            return;
        };
        let s = &mut trace.children[i];
        if let Some(code) = status {
            s.set("http.response.status_code", i64::from(code));
            if (200..300).contains(&code) {
                trace.open_attempt = Some(i);
                return;
            }
        }
        let e = error.map_or_else(|| status.unwrap_or(0).to_string(), str::to_string);
        s.set("error.type", e.as_str());
        s.error = Some(e);
        s.end = Some(Instant::now());
    }

    /// W3C trace context for the provider, with tracing on: this attempt's span as the parent
    /// when the request is traced, else the caller's headers as they came. With tracing off
    /// nothing is forwarded (`baggage` may carry user ids a provider has no business seeing).
    /// Empty, and no allocation, when there is nothing to send.
    fn trace_headers(&self, span: Option<usize>) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        if self.gw.tracer.is_none() {
            return out;
        }
        let client = &self.session.req_header().headers;
        match (span, &self.ctx.trace) {
            (Some(i), Some(t)) => {
                let parent = t.traceparent(&t.children[i].span_id);
                if let Ok(v) = HeaderValue::from_str(&parent) {
                    out.push((HeaderName::from_static("traceparent"), v));
                }
                if let Some(v) = t
                    .trace_state
                    .as_deref()
                    .and_then(|s| HeaderValue::from_str(s).ok())
                {
                    out.push((HeaderName::from_static("tracestate"), v));
                }
                if let Some(v) = client.get("baggage") {
                    out.push((HeaderName::from_static("baggage"), v.clone()));
                }
            }
            _ => {
                for name in crate::otel::CONTEXT_HEADERS {
                    if let Some(v) = client.get(name) {
                        out.push((HeaderName::from_static(name), v.clone()));
                    }
                }
            }
        }
        out
    }

    /// Sends the planned call to one backend and waits for the response head while watching the
    /// client: if it hangs up, the upstream call is dropped (its connection closed) instead of
    /// generating tokens nobody reads, and `Ok(None)` is returned. Non-2xx responses are returned
    /// for the caller to judge (retry, fall back, or relay).
    async fn send_to(
        &mut self,
        backend: &crate::providers::Provider,
        plan: &Plan,
        timeouts: &crate::upstream::Timeouts,
        span: Option<usize>,
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
        let trace_headers = self.trace_headers(span);
        let with_more_headers;
        let headers: &[(HeaderName, HeaderValue)] =
            if plan.headers.is_empty() && trace_headers.is_empty() {
                &headers
            } else {
                with_more_headers = [&headers[..], &plan.headers[..], &trace_headers[..]].concat();
                &with_more_headers
            };
        let req = UpstreamRequest {
            method: Method::POST,
            path: &plan.path,
            headers,
            body: plan.body.clone(),
            request_id: &self.ctx.request_id,
            timeouts: Some(timeouts),
        };
        self.ctx.upstream.calls += 1;
        let waited = Instant::now();
        let sent = unless_client_leaves(self.session, self.gw.client.send(backend, &req)).await;
        self.ctx.upstream.wait += waited.elapsed();
        let Some(sent) = sent else {
            self.end_attempt(span, None, Some("client_disconnected"));
            self.ctx.client_left();
            // The body was (being) sent: the provider bills the prompt it processed, so the
            // caller is charged at least the prompt estimate.
            if self.ctx.answer.usage.is_none() && self.ctx.answer.estimated_usage.is_none() {
                self.ctx.answer.estimated_usage =
                    Some((filters::usage::estimate_tokens(plan.body.len()), 0));
            }
            return Ok(None);
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                self.ctx.upstream.failure = Some(e.reason());
                self.end_attempt(span, None, Some(e.reason()));
                return Err(e);
            }
        };
        self.ctx.upstream.addr = Some(resp.addr);
        self.ctx.upstream.retries += resp.retries;
        let status = resp.status();
        self.end_attempt(span, Some(status), None);
        if !(200..300).contains(&status) {
            self.ctx.upstream.failure = Some(match status {
                429 => "status_429",
                500..=599 => "status_5xx",
                _ => "status_4xx",
            });
        }
        Ok(Some(resp))
    }
}
