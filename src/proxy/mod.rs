//! The Pingora `ProxyHttp` implementation: the gateway's front door.
//!
//! - LLM endpoints (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`) and
//!   `/v1/models` are answered from `request_filter` by the handlers in `crate::handlers`, which
//!   call upstreams with the gateway's own client (see docs/ARCHITECTURE.md for why).
//! - `/proxy/{provider}/{path}` goes through Pingora's proxy loop unchanged: bodies of any size
//!   stream both ways, and the filters below only pick the peer and swap credentials.

pub mod body;
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

use crate::config::Config;
use crate::errors::ApiError;
use crate::handlers::{self, llm::Endpoint};
use crate::providers::{Provider, Providers};
use crate::routing::Router;
use crate::upstream::UpstreamClient;

/// Shared, immutable state of a running gateway.
pub struct Gateway {
    pub cfg: Arc<Config>,
    pub providers: Arc<Providers>,
    pub router: Router,
    pub client: UpstreamClient,
}

impl Gateway {
    pub fn new(cfg: Arc<Config>, providers: Arc<Providers>) -> Self {
        Gateway {
            router: Router::new(&cfg, providers.clone()),
            client: UpstreamClient::new(&cfg.client),
            providers,
            cfg,
        }
    }
}

/// Per-request state; also what the access log line is made of.
pub struct RequestCtx {
    pub request_id: String,
    pub start: Instant,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub status: u16,
    pub bytes_out: usize,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub error: Option<&'static str>,
    pub client_gone: bool,
    pub upstream_addr: Option<std::net::SocketAddr>,
    /// Set for `/proxy/{provider}/...` requests that go through the proxy loop.
    passthrough: Option<Passthrough>,
    body_seen: usize,
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
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            request_id: String::new(),
            start: Instant::now(),
            provider: None,
            model: None,
            status: 0,
            bytes_out: 0,
            prompt_tokens: None,
            completion_tokens: None,
            error: None,
            client_gone: false,
            upstream_addr: None,
            passthrough: None,
            body_seen: 0,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.start = Instant::now();
        ctx.request_id = request_id(session);
        let s = &self.cfg.server;
        session.set_read_timeout(Some(s.read_timeout.get()));
        session.set_write_timeout(Some(s.write_timeout.get()));
        session.set_keepalive(Some(s.idle_timeout.get().as_secs()));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let answered = match (method, path.as_str()) {
            (Method::GET | Method::HEAD, "/health") => {
                let _ = respond::json(session, ctx, 200, Bytes::from_static(br#"{"status":"ok"}"#))
                    .await;
                true
            }
            (Method::POST, "/v1/chat/completions") => {
                handlers::llm::handle(self, session, ctx, Endpoint::Chat).await;
                true
            }
            (Method::POST, "/v1/completions") => {
                handlers::llm::handle(self, session, ctx, Endpoint::Completions).await;
                true
            }
            (Method::POST, "/v1/embeddings") => {
                handlers::llm::handle(self, session, ctx, Endpoint::Embeddings).await;
                true
            }
            (Method::GET, "/v1/models") => {
                handlers::models::handle(self, session, ctx).await;
                true
            }
            (_, p) if p.starts_with("/proxy/") => self.start_passthrough(session, ctx).await,
            (m, p) => {
                let known = matches!(
                    p,
                    "/health"
                        | "/v1/chat/completions"
                        | "/v1/completions"
                        | "/v1/embeddings"
                        | "/v1/models"
                );
                let err = if known {
                    ApiError::new(405, format!("Method {m} is not allowed on {p}"))
                        .code("method_not_allowed")
                } else {
                    ApiError::new(404, format!("Invalid URL ({m} {p})")).code("not_found")
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
        ctx: &mut RequestCtx,
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
        ctx: &mut RequestCtx,
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
        req.insert_header(http::header::HOST, pt.provider.authority.as_str())?;
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
        ctx: &mut RequestCtx,
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
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.status = resp.status.as_u16();
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let provider = ctx.provider.clone().unwrap_or_default();
        let (status, code, message) = match e.etype() {
            ErrorType::HTTPStatus(413) => (
                413,
                "request_too_large",
                "Request body is too large".to_string(),
            ),
            ErrorType::HTTPStatus(s) => (*s, "error", e.to_string()),
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout => (
                502,
                "upstream_connect_error",
                format!("could not connect to provider {provider}"),
            ),
            ErrorType::ReadTimedout => (
                504,
                "upstream_timeout",
                format!("provider {provider} timed out"),
            ),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
                if e.esource() == &pingora::ErrorSource::Downstream =>
            {
                ctx.client_gone = true;
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                };
            }
            _ => (
                502,
                "upstream_error",
                format!("request to provider {provider} failed"),
            ),
        };
        // Only possible while no response header was sent; afterwards the connection is closed.
        if session.response_written().is_none() {
            let err = ApiError::new(status, message).code(code);
            respond::error(session, ctx, &err).await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.status == 0 {
            ctx.status = session.response_written().map_or(0, |r| r.status.as_u16());
        }
        let req = session.req_header();
        info!(
            target: "access",
            "request_id={} method={} path={} status={} provider={} upstream={} model={} prompt_tokens={} completion_tokens={} duration_ms={} bytes_out={} error={}{}",
            ctx.request_id,
            req.method,
            req.uri.path(),
            ctx.status,
            ctx.provider.as_deref().unwrap_or("-"),
            ctx.upstream_addr.map_or("-".into(), |a| a.to_string()),
            ctx.model.as_deref().unwrap_or("-"),
            ctx.prompt_tokens.map_or("-".into(), |t| t.to_string()),
            ctx.completion_tokens.map_or("-".into(), |t| t.to_string()),
            ctx.start.elapsed().as_millis(),
            ctx.bytes_out.max(session.body_bytes_sent()),
            ctx.error.unwrap_or("-"),
            if ctx.client_gone { " client_disconnected=true" } else { "" },
        );
        if let Some(e) = e {
            if !ctx.client_gone {
                warn!("request {} failed: {e}", ctx.request_id);
            }
        }
    }
}

impl Gateway {
    /// Sets up a `/proxy/{provider}/{path}` request for the proxy loop; answers errors itself.
    async fn start_passthrough(&self, session: &mut Session, ctx: &mut RequestCtx) -> bool {
        let uri = &session.req_header().uri;
        let rest = &uri.path()["/proxy/".len()..];
        let (name, path) = rest.split_once('/').unwrap_or((rest, ""));
        let Some(provider) = self.providers.get(name).cloned() else {
            let err =
                ApiError::new(404, format!("Unknown provider {name:?}")).code("unknown_provider");
            respond::error(session, ctx, &err).await;
            return true;
        };
        if let Err(err) =
            body::check_declared_length(session, self.cfg.server.max_request_body_size)
        {
            respond::error(session, ctx, &err).await;
            return true;
        }
        let endpoint = format!("/{path}");
        let path = provider.path_and_query(&endpoint, uri.query());
        ctx.provider = Some(provider.name.clone());
        ctx.passthrough = Some(Passthrough { provider, path });
        false
    }
}
