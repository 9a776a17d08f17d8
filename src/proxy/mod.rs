//! The Pingora `ProxyHttp` implementation: the gateway's front door.
//!
//! - LLM endpoints (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`) and
//!   `/v1/models` are answered from `request_filter` by the front doors (`crate::door`, then `crate::exchange`) and `crate::model_list`, which
//!   call upstreams with the gateway's own client (see docs/ARCHITECTURE.md for why).
//! - `/proxy/{provider}/{path}` goes through Pingora's proxy loop unchanged: bodies of any size
//!   stream both ways, and the filters below only pick the peer and swap credentials.

pub mod body;
pub mod record;
pub mod respond;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use log::{info, warn};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::config::{Config, LogFormat};
use crate::door;
use crate::errors::{ApiError, Code};
use crate::exchange::Endpoint;
use crate::metrics::Metrics;
use crate::providers::{Provider, Providers};
use crate::routing::Router;
use crate::upstream::UpstreamClient;
use filters::usage::Usage;

/// Shared, immutable state of a running gateway.
pub struct Gateway {
    pub cfg: Arc<Config>,
    pub providers: Arc<Providers>,
    pub router: Arc<Router>,
    pub client: UpstreamClient,
    /// Every provider's backend pool.
    pub pools: Arc<crate::pool::Pools>,
    pub auth: Arc<crate::auth::Auth>,
    pub limiter: Arc<crate::limits::Limiter>,
    /// Present when telemetry is enabled.
    pub metrics: Option<Arc<Metrics>>,
    /// Present when MCP servers are configured.
    pub mcp: Option<Arc<crate::mcp::McpHub>>,
    /// Present when A2A agents are configured.
    pub a2a: Option<Arc<crate::a2a::A2aHub>>,
    /// Providers' model lists for `GET /v1/models`.
    pub models_cache: crate::model_list::ModelsCache,
    /// Reasoning state kept for clients that echo only the standard fields.
    pub vault: crate::vault::Vault,
    /// Stored responses of the Responses door, and its sealing key.
    pub responses: crate::responses::ResponseStore,
    /// The control plane (a store is configured): keys issued at run time.
    pub control: Option<Arc<crate::control::ControlPlane>>,
    /// This replica's recent activity, for the admin API (kept when it exists).
    pub stats: Option<Arc<crate::stats::Stats>>,
    /// `/mcp`: the gateway as an MCP server.
    pub mcp_server: crate::mcp::server::McpServer,
    /// The response cache (`cache.enable`).
    pub cache: Option<Arc<crate::cache::ResponseCache>>,
    /// Input and output checks (any `[guardrails]` rule).
    pub guardrails: Option<Arc<crate::guardrails::Guardrails>>,
    /// OpenTelemetry traces (an OTLP endpoint is configured).
    pub tracer: Option<Arc<crate::otel::Tracer>>,
    log_format: LogFormat,
    /// `store.log_bodies` with a request log to keep them in.
    log_bodies: bool,
}

impl Gateway {
    pub fn new(
        cfg: Arc<Config>,
        providers: Arc<Providers>,
        metrics: Option<Arc<Metrics>>,
        mcp: Option<Arc<crate::mcp::McpHub>>,
        a2a: Option<Arc<crate::a2a::A2aHub>>,
        pools: Arc<crate::pool::Pools>,
        control: Option<crate::control::Start>,
    ) -> Self {
        let auth = Arc::new(crate::auth::Auth::from_config(&cfg));
        let stats = cfg
            .admin_api()
            .then(|| Arc::new(crate::stats::Stats::default()));
        let limiter = Arc::new(crate::limits::Limiter::from_config(&cfg, metrics.clone()));
        let router = Arc::new(Router::new(&cfg, providers.clone()));
        let control = control.map(|start| {
            Arc::new(crate::control::ControlPlane::new(
                start,
                auth.clone(),
                limiter.clone(),
                metrics.clone(),
                crate::control::Routing::new(router.clone(), pools.clone(), cfg.retry.clone()),
                &cfg.store,
            ))
        });
        let mut responses = crate::responses::ResponseStore::from_config(&cfg);
        if let Some(cp) = &control {
            // Stored responses live in the store: durable, and seen by every replica.
            responses.use_store(cp.store.clone());
        }
        Gateway {
            cache: crate::cache::ResponseCache::from_config(&cfg).map(Arc::new),
            guardrails: crate::guardrails::Guardrails::from_config(&cfg).map(Arc::new),
            tracer: crate::otel::Tracer::from_config(&cfg.otel, metrics.clone()),
            mcp_server: crate::mcp::server::McpServer::new(&cfg),
            control,
            auth,
            stats,
            limiter,
            mcp,
            a2a,
            models_cache: Default::default(),
            vault: crate::vault::Vault::from_config(&cfg),
            responses,
            pools,
            router,
            client: UpstreamClient::new(&cfg.client),
            providers,
            metrics,
            log_format: cfg.log_format(),
            log_bodies: cfg.store.log_bodies
                && cfg.store.database_url.is_some()
                && !cfg.store.request_log_retention.get().is_zero(),
            cfg,
        }
    }
}

/// Per-request state, and the one record metrics, the access log and the limits' settlement
/// are made of. Grouped by who writes it: the caller (authentication and admission), the
/// upstream side (dispatch), the answer (relay and the client writer); the rest is the request.
pub struct RequestCtx {
    pub request_id: String,
    pub start: Instant,
    /// Bounded label for the endpoint (`/v1/chat/completions`, `/proxy/{provider}`, `other`).
    pub route: &'static str,
    /// The client API the request came in through (its errors and answers use its shape).
    pub door: filters::doors::Door,
    /// The client's request in its door's API, when the door is not the canonical one.
    pub original: Option<Box<crate::exchange::OriginalRequest>>,
    /// The Responses door's turn (ids, sealing, what to store).
    pub responses: Option<Box<crate::responses::Turn>>,
    /// Model as the client named it.
    pub model: Option<String>,
    /// What the response cache did (`x-gateway-cache`), while the cache is on.
    pub cache: Option<crate::cache::Status>,
    /// A miss that may be stored: the entry's key, taken when the answer is complete.
    pub cache_key: Option<String>,
    /// The caller's guardrail profile when it checks answers.
    pub output_guard: Option<Arc<crate::guardrails::Profile>>,
    /// The request's trace, when it is sampled.
    pub trace: Option<Box<crate::otel::Trace>>,
    pub bytes_in: usize,
    /// The prompt's size when the door added to what the client sent (a stored conversation
    /// expanded from `previous_response_id`): what limits and estimates count.
    pub prompt_bytes: Option<usize>,
    /// Time spent waiting for MCP tool calls (the tool loop).
    pub tool_wait: std::time::Duration,
    /// Model calls made by the MCP tool loop (0: the loop did not run).
    pub mcp_rounds: u32,
    /// The client's `messages` before the reasoning vault added state to them: what a fallback
    /// of a dialect that does not take that state is sent.
    pub client_messages: Option<Box<serde_json::value::RawValue>>,
    /// Development only: the start of the request body, for the access log.
    pub body_sample: Option<String>,
    /// Bodies go to the request log (`store.log_bodies`).
    pub log_bodies: bool,
    /// The request body as the request log keeps it (`store.log_bodies`).
    pub logged_body: Option<String>,
    pub caller: CallerRecord,
    pub upstream: UpstreamRecord,
    pub answer: AnswerRecord,
    /// Set for `/proxy/{provider}/...` requests that go through the proxy loop.
    passthrough: Option<Passthrough>,
    body_seen: usize,
    /// Counts this request as in flight until the context is dropped.
    _in_flight: crate::drain::InFlight,
    /// Admitted under `server.max_connections` (held until the context is dropped).
    admitted: Option<crate::drain::Admitted>,
}

/// Who is calling, and what the request may spend (written by authentication and admission).
#[derive(Default)]
pub struct CallerRecord {
    /// The authenticated caller (keys or OIDC); `None` on an open gateway.
    pub principal: Option<crate::auth::Principal>,
    /// The caller's limits admission, settled with the actual usage in `logging`.
    pub admission: Option<crate::limits::Admission>,
    /// Admissions of later MCP loop rounds (reservations only: released in `logging`).
    pub round_admissions: Vec<crate::limits::Admission>,
    /// The key's team's admission (its shared limits and budget), settled like the key's.
    pub team_admission: Option<crate::limits::Admission>,
    /// Completion tokens one model call of this request may use (`max_tokens` x `n`, or the
    /// default reserve), reserved against TPM and budget.
    pub completion_reserve: u64,
    /// `x-ratelimit-*` values for every response of this request.
    pub rate_headers: Option<crate::limits::RateHeaders>,
}

/// The provider side (written by routing and dispatch).
#[derive(Default)]
pub struct UpstreamRecord {
    pub provider: Option<String>,
    /// Model as sent to the provider.
    pub model: Option<String>,
    pub addr: Option<std::net::SocketAddr>,
    /// Calls sent to the provider (the MCP loop makes one per round).
    pub calls: u32,
    /// Why the provider request failed, if it did (`connect`, `timeout`, `status_5xx`, ...).
    pub failure: Option<&'static str>,
    pub retries: u32,
    /// Time spent waiting for the provider (headers and body reads).
    pub wait: std::time::Duration,
    /// End of the request's total time (`timeouts.total`), once routed.
    pub deadline: Option<tokio::time::Instant>,
    /// The serving backend's load-shedding permit and in-flight count, held until the request
    /// ends (a stream counts for as long as it runs).
    pub hold: Option<(
        Option<tokio::sync::OwnedSemaphorePermit>,
        crate::pool::InFlight,
    )>,
}

/// What the client got (written by the relay and the client writer).
#[derive(Default)]
pub struct AnswerRecord {
    pub status: u16,
    pub bytes_out: usize,
    /// Usage as reported by the provider.
    pub usage: Option<Usage>,
    /// (prompt, completion) estimate when a stream ended without a usage report.
    pub estimated_usage: Option<(u64, u64)>,
    /// Tool calls the model returned.
    pub tool_calls: Vec<String>,
    /// Finish reasons of the answer, one per choice (recorded for traces).
    pub finish_reasons: Vec<String>,
    /// The model the answer names (recorded for traces; a provider may name a dated version).
    pub model: Option<String>,
    /// Request start to the first streamed event.
    pub ttft: Option<std::time::Duration>,
    /// First streamed event to the end of the stream.
    pub generation: Option<std::time::Duration>,
    /// Cost already computed per round (the MCP loop, whose rounds may be served by different
    /// models); otherwise priced from the usage in `logging`.
    pub cost_usd: Option<f64>,
    pub error: Option<&'static str>,
    pub client_gone: bool,
    /// The answer as the door keeps it (the Responses door's `response` object).
    pub document: Option<bytes::Bytes>,
    /// The answer as the request log keeps it (`store.log_bodies`; at most 64 KiB).
    pub logged_body: Option<String>,
}

impl RequestCtx {
    /// The client hung up: recorded as the request's outcome.
    pub fn client_left(&mut self) {
        self.answer.client_gone = true;
        self.answer.error = Some("client_disconnected");
    }
}

struct Passthrough {
    provider: Arc<Provider>,
    path: String,
}

/// Headers that carry the caller's credentials; never forwarded upstream.
const CALLER_CREDENTIALS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
];

/// The paths the gateway answers itself, as their own (bounded) metrics label.
const ROUTES: [&str; 15] = [
    "/health",
    "/mcp",
    "/.well-known/oauth-protected-resource/mcp",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/mcp/tools",
    "/v1/a2a/agents",
    "/v1/usage",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
    "/v1/responses/{id}",
    "/v1/responses/{id}/input_items",
];

/// The bounded label of a path: one of [`ROUTES`], `/proxy/{provider}`, or `other`.
fn route_label(path: &str) -> &'static str {
    if path.starts_with("/proxy/") {
        return "/proxy/{provider}";
    }
    if path.starts_with("/admin/") {
        return "/admin/v1";
    }
    if path == "/ui" || path.starts_with("/ui/") {
        return "/ui";
    }
    if let Some(rest) = path.strip_prefix("/v1/responses/") {
        return match rest.split_once('/') {
            None if !rest.is_empty() => "/v1/responses/{id}",
            Some((id, "input_items")) if !id.is_empty() => "/v1/responses/{id}/input_items",
            _ => "other",
        };
    }
    ROUTES
        .iter()
        .find(|r| **r == path)
        .copied()
        .unwrap_or("other")
}

fn request_id(session: &Session) -> String {
    crate::request_id::from_header(
        session
            .req_header()
            .headers
            .get("x-request-id")
            .map(|v| v.as_bytes()),
    )
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: Pingora keeps the context inline in its request future, which it copies into a
    /// box of its own per request and holds for a stream's whole life, in more than one place
    /// (issue 22: ~4 KB more per request and per open stream than one pointer).
    type CTX = Box<RequestCtx>;

    fn new_ctx(&self) -> Box<RequestCtx> {
        Box::new(RequestCtx {
            request_id: String::new(),
            start: Instant::now(),
            route: "other",
            door: filters::doors::Door::Chat,
            original: None,
            responses: None,
            model: None,
            cache: None,
            cache_key: None,
            output_guard: None,
            trace: None,
            bytes_in: 0,
            prompt_bytes: None,
            tool_wait: std::time::Duration::ZERO,
            mcp_rounds: 0,
            client_messages: None,
            body_sample: None,
            log_bodies: self.log_bodies,
            logged_body: None,
            caller: CallerRecord::default(),
            upstream: UpstreamRecord::default(),
            answer: AnswerRecord::default(),
            passthrough: None,
            body_seen: 0,
            _in_flight: crate::drain::InFlight::start(),
            admitted: None,
        })
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        ctx.start = Instant::now();
        ctx.request_id = request_id(session);
        if let Some(t) = &self.tracer {
            // Health probes (every few seconds from every load balancer) are not traced.
            if session.req_header().uri.path() != "/health" {
                ctx.trace = t.start(session.req_header(), ctx.start);
            }
        }
        let s = &self.cfg.server;
        session.set_read_timeout(Some(s.read_timeout.get()));
        session.set_write_timeout(Some(s.write_timeout.get()));
        if crate::drain::draining() {
            // Send clients to the new process (or away) instead of keeping them here.
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(s.idle_timeout.get().as_secs()));
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        ctx.route = route_label(&path);
        if self.cache.is_some() && ctx.route.starts_with("/v1/") {
            // Every API answer says what the cache did (errors before a lookup: bypass).
            ctx.cache = Some(crate::cache::Status::Bypass);
        }
        if ctx.route.starts_with("/v1/messages") {
            // Every answer from here on, errors included, is in Anthropic's shape.
            ctx.door = filters::doors::Door::Messages;
        } else if ctx.route.starts_with("/v1/responses") {
            ctx.door = filters::doors::Door::Responses;
        }
        // Overload: Pingora 0.9 cannot cap accepted connections (its connection filter sees
        // accepts but never closes), so requests in flight are capped instead, and past half
        // the cap answers close their connection rather than keep it idle.
        let cap = self.cfg.server.max_connections;
        if cap > 0 {
            let in_flight = crate::drain::in_flight();
            if in_flight > cap / 2 {
                session.set_keepalive(None);
            }
            ctx.admitted = crate::drain::Admitted::try_new(cap);
            if ctx.admitted.is_none() {
                let mut err = ApiError::of(
                    Code::ServerBusy,
                    "The gateway is at its request limit; retry shortly",
                );
                err.retry_after = Some(std::time::Duration::from_secs(1));
                respond::error(session, ctx, &err).await;
                return Ok(true);
            }
        }
        // Only `/proxy` passes other methods through (labelled `other`): anything else answers
        // 405 before any work, so made-up methods cannot reach handlers or logs.
        if ctx.route != "/proxy/{provider}" && record::method_label(&method) == "other" {
            let err = ApiError::of(Code::MethodNotAllowed, "Method not allowed");
            respond::error(session, ctx, &err).await;
            return Ok(true);
        }
        // Every API endpoint needs a caller once keys or OIDC are configured (`/health` and
        // unknown paths do not).
        if ctx.route == "/admin/v1" {
            // The admin API has its own credential (never an API key).
            Box::pin(crate::admin::handle(self, session, ctx)).await;
            return Ok(true);
        }
        if ctx.route == "/ui" {
            // Static pages: the admin key is entered in them, so they need no credential.
            Box::pin(crate::ui::serve(self, session, ctx)).await;
            return Ok(true);
        }
        if ctx.route == "/.well-known/oauth-protected-resource/mcp" {
            Box::pin(crate::mcp::server::resource_metadata(self, session, ctx)).await;
            return Ok(true);
        }
        // `/mcp` is refused before anything else unless MCP_EXPOSE says so (as the Go gateway).
        if ctx.route == "/mcp" && !self.cfg.mcp.expose {
            let err = ApiError::of(
                Code::McpNotExposed,
                "The gateway's MCP server is not exposed (set MCP_EXPOSE=true)",
            );
            respond::error(session, ctx, &err).await;
            return Ok(true);
        }
        // Boxed, like every handler but the front doors': this future lives (on the heap, boxed
        // by Pingora's trait) as long as the request, a stream's whole life included, at the size
        // of its largest branch (issue 22: memory per idle stream).
        if ctx.route != "/health" && ctx.route != "other" && self.auth.required() {
            match Box::pin(self.auth.authenticate(&session.req_header().headers)).await {
                Ok(p) => ctx.caller.principal = p,
                Err(e) => {
                    if ctx.route == "/mcp" {
                        Box::pin(crate::mcp::server::unauthorized(self, session, ctx, &e)).await;
                    } else {
                        respond::error(session, ctx, &e).await;
                    }
                    return Ok(true);
                }
            }
        }
        let answered = match (method, path.as_str()) {
            (Method::GET | Method::HEAD, "/health") => {
                Box::pin(self.health(session, ctx)).await;
                true
            }
            (Method::POST, "/v1/chat/completions") => {
                door::handle(self, session, ctx, Endpoint::Chat).await;
                true
            }
            (Method::POST, "/v1/completions") => {
                door::handle(self, session, ctx, Endpoint::Completions).await;
                true
            }
            (Method::POST, "/v1/embeddings") => {
                door::handle(self, session, ctx, Endpoint::Embeddings).await;
                true
            }
            (Method::POST, "/v1/messages") => {
                door::handle(self, session, ctx, Endpoint::Chat).await;
                true
            }
            (Method::POST, "/v1/messages/count_tokens") => {
                door::handle(self, session, ctx, Endpoint::CountTokens).await;
                true
            }
            (Method::POST, "/v1/responses") => {
                door::handle(self, session, ctx, Endpoint::Chat).await;
                true
            }
            (m, p)
                if p.starts_with("/v1/responses/") && crate::responses::route(&m, p).is_some() =>
            {
                let (action, id) = crate::responses::route(&m, p).expect("matched");
                Box::pin(crate::responses::serve(self, session, ctx, action, &id)).await;
                true
            }
            (Method::GET, "/v1/models") => {
                Box::pin(crate::model_list::handle(self, session, ctx)).await;
                true
            }
            (_, "/mcp") => {
                Box::pin(crate::mcp::server::handle(self, session, ctx)).await;
                true
            }
            (Method::GET, "/v1/a2a/agents") => {
                Box::pin(self.a2a_agents(session, ctx)).await;
                true
            }
            (Method::GET, "/v1/mcp/tools") => {
                Box::pin(self.mcp_tools(session, ctx)).await;
                true
            }
            (Method::GET, "/v1/usage") => {
                Box::pin(self.usage(session, ctx)).await;
                true
            }
            (_, p) if p.starts_with("/proxy/") => {
                Box::pin(self.start_passthrough(session, ctx)).await
            }
            (m, p) => {
                let err = if ctx.route != "other" {
                    ApiError::of(
                        Code::MethodNotAllowed,
                        format!("Method {m} is not allowed on {p}"),
                    )
                } else {
                    ApiError::of(Code::NotFound, format!("Invalid URL ({m} {p})"))
                };
                respond::error(session, ctx, &err).await;
                true
            }
        };
        Ok(answered)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let pt = ctx.passthrough.as_ref().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "no upstream for this route")
        })?;
        let mut peer =
            self.client.peer(&pt.provider).await.map_err(|e| {
                Error::explain(ErrorType::ConnectError, e.message(&pt.provider.name))
            })?;
        // On the proxy path Pingora applies read_timeout per read: the idle gap of a stream.
        peer.options.read_timeout = Some(self.cfg.client.stream_idle_timeout.get());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let Some(pt) = ctx.passthrough.as_ref() else {
            return Ok(());
        };
        for h in CALLER_CREDENTIALS {
            req.remove_header(*h);
        }
        let uri: http::Uri = pt
            .path
            .parse()
            .map_err(|_| Error::explain(ErrorType::HTTPStatus(400), "invalid upstream path"))?;
        req.set_uri(uri);
        req.insert_header(http::header::HOST, pt.provider.host_value.clone())?;
        if let Some((name, value)) = pt.provider.auth_header() {
            req.insert_header(name, value.clone())?;
        }
        for (k, v) in &pt.provider.headers {
            req.insert_header(k.clone(), v.clone())?;
        }
        req.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // Chunked pass-through bodies have no Content-Length to check up front.
        if let Some(b) = body {
            ctx.body_seen += b.len();
            if ctx.body_seen > self.cfg.server.max_request_body_size {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body too large");
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        ctx.answer.status = resp.status.as_u16();
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let provider = ctx.upstream.provider.clone().unwrap_or_default();
        let (code, message) = match e.etype() {
            ErrorType::HTTPStatus(413) => (
                Code::RequestTooLarge,
                "Request body is too large".to_string(),
            ),
            // Pingora refused the request itself (a malformed head, a body error).
            ErrorType::HTTPStatus(408) => (Code::BodyTimeout, e.to_string()),
            ErrorType::HTTPStatus(s) if *s < 500 => (Code::InvalidRequest, e.to_string()),
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout => (
                Code::UpstreamConnectError,
                format!("could not connect to provider {provider}"),
            ),
            ErrorType::ReadTimedout => (
                Code::UpstreamTimeout,
                format!("provider {provider} timed out"),
            ),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
                if e.esource() == &pingora::ErrorSource::Downstream =>
            {
                ctx.answer.client_gone = true;
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                };
            }
            _ => (
                Code::UpstreamError,
                format!("request to provider {provider} failed"),
            ),
        };
        let status = code.status();
        // Only possible while no response header was sent; afterwards the connection is closed.
        if session.response_written().is_none() {
            let err = ApiError::of(code, message);
            respond::error(session, ctx, &err).await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        // What the caller was charged (for the admin API's stats).
        let mut spent_micro = 0i64;
        if let Some(adm) = ctx.caller.admission.take() {
            // Replace the reservation by what was used: exact usage, else the estimate (a
            // stream cut short, a provider without usage), charged at the model's price.
            // Only an answer that was relayed costs anything (a refused, failed or abandoned
            // call generated nothing the caller got).
            if ctx.answer.usage.is_none()
                && ctx.answer.estimated_usage.is_none()
                && (200..300).contains(&ctx.answer.status)
            {
                // Answered without a usage report: charge the byte estimate, not nothing.
                ctx.answer.estimated_usage = Some((
                    (ctx.prompt_bytes.unwrap_or(ctx.bytes_in) as u64).div_ceil(4),
                    (ctx.answer.bytes_out as u64).div_ceil(4),
                ));
            }
            let usage = ctx.answer.usage.clone().or_else(|| {
                ctx.answer
                    .estimated_usage
                    .map(|(p, c)| filters::usage::Usage {
                        prompt_tokens: p,
                        completion_tokens: c,
                        total_tokens: p + c,
                        ..Default::default()
                    })
            });
            let (tokens, cost) = match (&usage, &ctx.upstream.provider, &ctx.upstream.model) {
                // The MCP loop priced each round at the model that served it.
                (Some(u), _, _) if ctx.answer.cost_usd.is_some() => (
                    u.total_tokens.max(u.prompt_tokens + u.completion_tokens),
                    ctx.answer.cost_usd.unwrap_or(0.0),
                ),
                (Some(u), Some(p), Some(m)) => (
                    u.total_tokens.max(u.prompt_tokens + u.completion_tokens),
                    self.limiter.prices.cost(p, m, u),
                ),
                (Some(u), _, _) => (u.prompt_tokens + u.completion_tokens, 0.0),
                // Nothing reached the provider.
                (None, _, _) => (0, 0.0),
            };
            self.limiter.settle(&adm, tokens, cost).await;
            spent_micro = crate::limits::usd_to_micro(cost);
            if let Some(team) = ctx.caller.team_admission.take() {
                self.limiter.settle(&team, tokens, cost).await;
            }
            // The store's ledger: budgets survive restarts, /admin/v1/spend reports it.
            if let (Some(cp), Some(p)) = (&self.control, &ctx.caller.principal) {
                if let Some(u) = &usage {
                    cp.ledger.book(crate::ledger::Booking {
                        principal: p.id.clone(),
                        team: p.team.clone().unwrap_or_default(),
                        model: match (&ctx.upstream.provider, &ctx.upstream.model) {
                            (Some(pr), Some(m)) => format!("{pr}/{m}"),
                            _ => ctx.model.clone().unwrap_or_default(),
                        },
                        prompt_tokens: u.prompt_tokens,
                        completion_tokens: u.completion_tokens,
                        spend_micro: spent_micro,
                        at_secs: crate::store::now_ms() as u64 / 1000,
                    });
                }
            }
        }
        for round in ctx.caller.round_admissions.drain(..) {
            self.limiter.settle(&round, 0, 0.0).await;
        }
        if ctx.answer.status == 0 {
            ctx.answer.status = session.response_written().map_or(0, |r| r.status.as_u16());
        }
        if ctx.passthrough.is_some() {
            ctx.bytes_in = session.body_bytes_read();
            ctx.answer.bytes_out = session.body_bytes_sent();
        }
        if let Some(m) = &self.metrics {
            crate::proxy::record::metrics(m, session, ctx);
        }
        if let (Some(t), Some(mut trace)) = (&self.tracer, ctx.trace.take()) {
            let server = crate::proxy::record::server_span(session, ctx, &mut trace);
            t.finish(trace, server);
        }
        if let Some(stats) = &self.stats {
            let (prompt, completion) = match (&ctx.answer.usage, ctx.answer.estimated_usage) {
                (Some(u), _) => (u.prompt_tokens, u.completion_tokens),
                (None, Some(pc)) => pc,
                (None, None) => (0, 0),
            };
            // API requests only (not /health, the admin API or unknown paths).
            if ctx.route.starts_with("/v1/") || ctx.route.starts_with("/proxy/") {
                stats.record(crate::stats::Record {
                    status: ctx.answer.status,
                    provider: ctx.upstream.provider.as_deref(),
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                    spend_micro: spent_micro,
                    duration: ctx.start.elapsed(),
                    ttft: ctx.answer.ttft,
                });
            }
        }
        // API requests go to the store's request log (`/admin/v1/requests`) when there is one.
        let request_log = self
            .control
            .as_deref()
            .and_then(|cp| cp.requests.as_ref())
            .filter(|_| ctx.route.starts_with("/v1/") || ctx.route.starts_with("/proxy/"));
        let access = log::log_enabled!(target: "access", log::Level::Info);
        if access || request_log.is_some() {
            let req = session.req_header();
            let (prompt, completion, estimated) =
                match (&ctx.answer.usage, ctx.answer.estimated_usage) {
                    (Some(u), _) => (Some(u.prompt_tokens), Some(u.completion_tokens), false),
                    (None, Some((p, c))) => (Some(p), Some(c), true),
                    (None, None) => (None, None, false),
                };
            let record = crate::access_log::AccessRecord {
                time: crate::access_log::AccessRecord::now(),
                level: "info",
                kind: "access",
                request_id: &ctx.request_id,
                method: record::method_label(&req.method),
                path: req.uri.path(),
                status: ctx.answer.status,
                provider: ctx.upstream.provider.as_deref(),
                model: ctx.model.as_deref(),
                upstream_model: ctx.upstream.model.as_deref(),
                upstream: ctx.upstream.addr.map(|a| a.to_string()),
                key_id: ctx.caller.principal.as_ref().map(|p| p.name.as_str()),
                prompt_tokens: prompt,
                completion_tokens: completion,
                usage_estimated: estimated,
                ttft_ms: ctx.answer.ttft.map(|d| d.as_secs_f64() * 1000.0),
                duration_ms: ctx.start.elapsed().as_secs_f64() * 1000.0,
                upstream_ms: ctx.upstream.wait.as_secs_f64() * 1000.0,
                tool_ms: (ctx.mcp_rounds > 0).then_some(ctx.tool_wait.as_secs_f64() * 1000.0),
                mcp_rounds: (ctx.mcp_rounds > 0).then_some(ctx.mcp_rounds),
                bytes_in: ctx.bytes_in,
                bytes_out: ctx.answer.bytes_out,
                error: ctx.answer.error,
                client_disconnected: ctx.answer.client_gone,
                tool_calls: &ctx.answer.tool_calls,
                request_body: ctx.body_sample.as_deref(),
            };
            // Serialized once for both the JSON access line and the request log's record.
            let json_lines = self.log_format == crate::config::LogFormat::Json;
            let json = (request_log.is_some() || access && json_lines)
                .then(|| serde_json::to_string(&record).unwrap_or_default());
            if access {
                match &json {
                    Some(line) if json_lines => {
                        info!(target: "access", "{line}")
                    }
                    _ => info!(target: "access", "{}", record.render(self.log_format)),
                }
            }
            if let Some(log) = request_log {
                let principal = ctx.caller.principal.as_ref();
                log.record(crate::store::requests::RequestRow {
                    // The thread's generator, not a getrandom call per request.
                    id: format!("req_{}", crate::request_id::generate()),
                    request_id: ctx.request_id.clone(),
                    at: crate::store::now_ms(),
                    key_name: principal.map(|p| p.name.clone()).unwrap_or_default(),
                    team: principal.and_then(|p| p.team.clone()).unwrap_or_default(),
                    model: ctx.model.clone().unwrap_or_default(),
                    provider: ctx.upstream.provider.clone().unwrap_or_default(),
                    upstream_model: ctx.upstream.model.clone().unwrap_or_default(),
                    status: i64::from(ctx.answer.status),
                    duration_ms: ctx.start.elapsed().as_millis() as i64,
                    prompt_tokens: prompt.unwrap_or(0) as i64,
                    completion_tokens: completion.unwrap_or(0) as i64,
                    spend_micro: spent_micro,
                    record: json.unwrap_or_default(),
                    request_body: ctx.logged_body.take(),
                    response_body: ctx.answer.logged_body.take(),
                });
            }
        }
        if let Some(e) = e {
            if !ctx.answer.client_gone {
                warn!("request {} failed: {e}", ctx.request_id);
            }
        }
    }
}

impl Gateway {
    /// `GET /health`: 200, or 503 while draining (load balancers stop sending while in-flight
    /// work finishes). `?verbose` adds the version, uptime and every configured provider's
    /// backends with their state (never a key), as `server.health_verbose` allows: `auth` asks
    /// for a valid key or token (backend addresses are topology), `off` ignores it.
    async fn health(&self, session: &mut Session, ctx: &mut RequestCtx) {
        let draining = crate::drain::draining();
        let status = if draining { 503 } else { 200 };
        let verbose = session.req_header().uri.query().is_some_and(|q| {
            q.split('&')
                .any(|kv| kv == "verbose" || kv.starts_with("verbose="))
        });
        let verbose = verbose
            && match self.cfg.health_verbose() {
                crate::config::HealthVerbose::Public => true,
                crate::config::HealthVerbose::Off => false,
                crate::config::HealthVerbose::Auth => {
                    match self.auth.authenticate(&session.req_header().headers).await {
                        Ok(p) => ctx.caller.principal = p,
                        Err(e) => {
                            respond::error(session, ctx, &e).await;
                            return;
                        }
                    }
                    true
                }
            };
        let body = if verbose {
            let providers: serde_json::Map<String, serde_json::Value> = self
                .pools
                .all()
                .iter()
                // Configured providers only (the built-in table lists them all).
                .filter(|p| p.slots.iter().any(|s| s.provider.configured))
                .map(|p| (p.name.clone(), p.describe()))
                .collect();
            let mut v = serde_json::json!({
                "status": if draining { "draining" } else { "ok" },
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_seconds": crate::drain::uptime().as_secs(),
                "providers": providers,
            });
            if let Some(cp) = &self.control {
                // Serving from the last snapshot when the store is unreachable.
                v["store"] = cp.describe();
            }
            // Tool servers only where they are published (the admin health lists them all).
            if let Some(hub) = self.mcp.as_ref().filter(|_| self.cfg.mcp.expose) {
                v["mcp_servers"] = hub.tools_listing()["servers"].take();
            }
            if let Some(hub) = self.a2a.as_ref().filter(|_| self.cfg.a2a.expose) {
                v["a2a_agents"] = hub.listing()["data"].take();
            }
            Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
        } else if draining {
            Bytes::from_static(br#"{"status":"draining"}"#)
        } else {
            Bytes::from_static(br#"{"status":"ok"}"#)
        };
        let _ = respond::json(session, ctx, status, body).await;
    }

    /// `GET /v1/usage`: the calling key's spend, budget and this minute's counts.
    async fn usage(&self, session: &mut Session, ctx: &mut RequestCtx) {
        let Some(p) = ctx.caller.principal.clone() else {
            let err = crate::auth::unauthorized(
                "GET /v1/usage reports on the calling key: send one",
                crate::errors::Code::MissingApiKey,
            );
            respond::error(session, ctx, &err).await;
            return;
        };
        let counts = match self.limiter.usage(&p).await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("GET /v1/usage: {}", e.0);
                let err = ApiError::of(Code::LimitsUnavailable, "usage is unavailable right now");
                respond::error(session, ctx, &err).await;
                return;
            }
        };
        let l = &p.limits;
        let body = serde_json::json!({
            "object": "usage",
            "principal": p.name,
            "owner": p.owner,
            "metadata": *p.metadata,
            "period": format!("{:?}", l.budget_period).to_ascii_lowercase(),
            "spend_usd": counts.spend_micro as f64 / 1e6,
            "budget_usd": l.budget_usd,
            "requests_this_minute": counts.requests,
            "tokens_this_minute": counts.tokens,
            "limits": {"rpm": l.rpm, "tpm": l.tpm, "max_concurrent": l.max_concurrent, "models": l.models},
        });
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let _ = respond::json(session, ctx, 200, body).await;
    }

    /// `GET /v1/a2a/agents`: the A2A agents, their skills and health, when `A2A_EXPOSE` allows.
    async fn a2a_agents(&self, session: &mut Session, ctx: &mut RequestCtx) {
        if !self.cfg.a2a.expose {
            let err = ApiError::of(
                Code::A2aNotExposed,
                "A2A agents are not exposed (set A2A_EXPOSE=true)",
            );
            respond::error(session, ctx, &err).await;
            return;
        }
        let body = match &self.a2a {
            Some(hub) => hub.listing(),
            None => serde_json::json!({"object": "list", "data": []}),
        };
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let _ = respond::json(session, ctx, 200, body).await;
    }

    /// `GET /v1/mcp/tools`: the MCP tools and servers, when `MCP_EXPOSE` allows it.
    async fn mcp_tools(&self, session: &mut Session, ctx: &mut RequestCtx) {
        if !self.cfg.mcp.expose {
            let err = ApiError::of(
                Code::McpNotExposed,
                "MCP tools are not exposed (set MCP_EXPOSE=true)",
            );
            respond::error(session, ctx, &err).await;
            return;
        }
        let body = match &self.mcp {
            Some(hub) => hub.tools_listing(),
            None => serde_json::json!({"object": "list", "data": [], "servers": []}),
        };
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let _ = respond::json(session, ctx, 200, body).await;
    }

    /// Sets up a `/proxy/{provider}/{path}` request for the proxy loop; answers errors itself.
    async fn start_passthrough(&self, session: &mut Session, ctx: &mut RequestCtx) -> bool {
        let uri = &session.req_header().uri;
        let rest = &uri.path()["/proxy/".len()..];
        let (name, path) = rest.split_once('/').unwrap_or((rest, ""));
        // Built-in providers nobody configured are not reachable (their default hosts, e.g.
        // `ollama`, may be anything on the gateway's network).
        let Some(provider) = self.providers.get(name).filter(|p| p.configured).cloned() else {
            let err = ApiError::of(
                Code::UnknownProxyProvider,
                format!("Unknown provider {name:?}"),
            );
            respond::error(session, ctx, &err).await;
            return true;
        };
        if let Err(err) =
            body::check_declared_length(session, self.cfg.server.max_request_body_size)
        {
            respond::error(session, ctx, &err).await;
            return true;
        }
        // Dot-segments could climb out of the provider's base path (e.g. Cloudflare's
        // `/accounts/{id}/ai`) with the provider's credentials, in any spelling an upstream or
        // its CDN might normalise.
        if let Err(why) = check_proxy_path(path) {
            let err = ApiError::of(Code::InvalidPath, format!("Invalid /proxy path: {why}"));
            respond::error(session, ctx, &err).await;
            return true;
        }
        // Raw pass-through bypasses model checks, limits and spend: only keys without any of
        // them (or allowed `provider/*` with no limits) may use it.
        if let Some(p) = &ctx.caller.principal {
            let all_models = p.limits.models.is_empty()
                || p.limits.models.iter().any(|m| *m == format!("{name}/*"));
            if !p.may_proxy || !all_models || crate::limits::Limiter::applies(&p.limits) {
                let err = ApiError::of(Code::ProxyNotAllowed, format!(
                        "{} may not use /proxy/{name}: it would bypass the key's model list, limits and budget",
                        p.name
                    ));
                respond::error(session, ctx, &err).await;
                return true;
            }
        }
        let endpoint = format!("/{path}");
        let path = provider.path_and_query(&endpoint, uri.query());
        ctx.upstream.provider = Some(provider.name.clone());
        ctx.passthrough = Some(Passthrough { provider, path });
        false
    }
}

/// Refuses `/proxy` paths that could leave the provider's base path once anything on the way
/// decodes or normalises them: percent-decoded repeatedly (double encoding such as `%252e`),
/// backslashes read as slashes, `;` path parameters cut off, then no `.` or `..` segment and no
/// NUL may remain.
fn check_proxy_path(path: &str) -> Result<(), &'static str> {
    let mut decoded = std::borrow::Cow::Borrowed(path);
    // Three rounds cover triple encoding; a path that still decodes further is refused.
    for round in 0..=3 {
        let next = percent_encoding::percent_decode_str(&decoded).decode_utf8_lossy();
        if next == decoded {
            break;
        }
        if round == 3 {
            return Err("too many levels of percent-encoding");
        }
        decoded = std::borrow::Cow::Owned(next.into_owned());
    }
    if decoded.contains('\0') {
        return Err("NUL characters are not allowed");
    }
    let dot_segment = decoded.split(['/', '\\']).any(|seg| {
        let seg = seg.split(';').next().unwrap_or("");
        seg == "." || seg == ".."
    });
    if dot_segment {
        return Err("'.' and '..' segments are not allowed (in any encoding)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_proxy_path;

    #[test]
    fn proxy_paths_cannot_climb_in_any_spelling() {
        for ok in [
            "v1/models",
            "v1/chat/completions",
            "v1/files/file-abc.jsonl",
            "models/gemini-2.0-flash:generateContent",
            "a..b/c",
            "",
        ] {
            assert!(check_proxy_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "../x",
            "a/./b",
            "..%2f..%2fworkers",
            "%2e%2e/x",
            "%2E%2E%2Fx",
            "%252e%252e/x",
            "%25252e%25252e/x",
            "..;/x",
            "a/..;jsessionid=1/x",
            "..\\..\\x",
            "..%5cx",
            "%2e./x",
            "a/%00",
            "%2525252e",
        ] {
            assert!(check_proxy_path(bad).is_err(), "{bad}");
        }
    }
}
