//! The gateway's own upstream HTTP client, on Pingora's connector (same TLS, pool and peers as the
//! proxy path).
//!
//! LLM endpoints need the whole request body before choosing an upstream (the model is inside
//! it), may call several upstreams per client request (fallbacks, MCP rounds) and decide on
//! retries after seeing a status. See docs/ARCHITECTURE.md for why this is a client and not the
//! proxy loop.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method};
use pingora::connectors::http::v1::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;

use crate::config::ClientConfig;
use crate::providers::Provider;
use crate::resolver;

/// Why an upstream call failed before or while reading its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// DNS, TCP or TLS failure: nothing was sent.
    Connect(String),
    /// No response headers within the first-byte timeout.
    FirstByteTimeout,
    /// No body bytes within the idle timeout.
    IdleTimeout,
    /// The connection failed after the request was sent.
    Io(String),
    /// A non-streaming body larger than allowed.
    TooLarge,
    /// The request's total time (`timeouts.total`) ran out.
    Deadline,
}

impl UpstreamError {
    /// Status the client gets when this happens before any response byte was sent.
    pub fn status(&self) -> u16 {
        match self {
            UpstreamError::FirstByteTimeout
            | UpstreamError::IdleTimeout
            | UpstreamError::Deadline => 504,
            _ => 502,
        }
    }

    /// The `reason` label of `llm_upstream_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::FirstByteTimeout => "timeout",
            UpstreamError::IdleTimeout => "idle_timeout",
            UpstreamError::Io(_) => "io",
            UpstreamError::TooLarge => "too_large",
            UpstreamError::Deadline => "total_timeout",
        }
    }

    /// Machine-readable `code` for the error envelope.
    pub fn code(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "upstream_connect_error",
            UpstreamError::FirstByteTimeout => "upstream_timeout",
            UpstreamError::IdleTimeout => "upstream_idle_timeout",
            UpstreamError::Io(_) => "upstream_error",
            UpstreamError::TooLarge => "upstream_response_too_large",
            UpstreamError::Deadline => "request_timeout",
        }
    }

    pub fn message(&self, provider: &str) -> String {
        match self {
            UpstreamError::Connect(e) => format!("could not connect to provider {provider}: {e}"),
            UpstreamError::FirstByteTimeout => {
                format!("provider {provider} did not answer within the first-byte timeout")
            }
            UpstreamError::IdleTimeout => {
                format!("provider {provider} stopped sending data (idle timeout)")
            }
            UpstreamError::Io(e) => format!("connection to provider {provider} failed: {e}"),
            UpstreamError::TooLarge => {
                format!("provider {provider} sent a response that is too large")
            }
            UpstreamError::Deadline => {
                format!("the request to provider {provider} ran out of its total time")
            }
        }
    }
}

pub struct UpstreamClient {
    /// HTTP/1.1 only (peers ask for no ALPN): the version's own connector, whose pool lookup
    /// is a small future apart from the connect (TLS handshake included), which is kilobytes.
    connector: Connector,
    cfg: ClientConfig,
}

/// A request to send upstream.
pub struct UpstreamRequest<'a> {
    pub method: Method,
    /// Path and query, as sent on the request line.
    pub path: &'a str,
    /// Extra headers (the provider's auth and configured headers are added automatically).
    pub headers: &'a [(HeaderName, HeaderValue)],
    pub body: Bytes,
    pub request_id: &'a str,
    /// Overrides of the client's timeouts (provider, alias, total deadline).
    pub timeouts: Option<&'a Timeouts>,
}

/// Timeouts of one upstream call.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub stream_idle: Duration,
    /// End of the request's total time, if it has one.
    pub deadline: Option<tokio::time::Instant>,
}

/// An upstream response whose headers have arrived; the body is read with
/// [`read_chunk`](UpstreamResponse::read_chunk).
pub struct UpstreamResponse {
    // Boxed (one allocation): a response moves through several layers (attempt, pool,
    // dispatch, relay) and is held by every open stream; inline, these are over a kilobyte.
    conn: Box<Connection>,
    idle_timeout: Duration,
    deadline: Option<tokio::time::Instant>,
    pub addr: std::net::SocketAddr,
    /// Stale pooled connections retried before this response.
    pub retries: u32,
}

impl UpstreamClient {
    pub fn new(cfg: &ClientConfig) -> Self {
        let mut opts = ConnectorOptions::new(cfg.max_idle_conns.max(1));
        opts.keepalive_pool_size = cfg.max_idle_conns.max(1);
        opts.ca_file = cfg
            .ca_file
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        UpstreamClient {
            connector: Connector::new(Some(opts)),
            cfg: cfg.clone(),
        }
    }

    /// The client's own timeouts (no deadline).
    pub fn default_timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.cfg.connect_timeout.get(),
            first_byte: self.cfg.first_byte_timeout.get(),
            stream_idle: self.cfg.stream_idle_timeout.get(),
            deadline: None,
        }
    }

    /// A peer for `provider` (TLS with SNI and verification for https).
    pub async fn peer(&self, provider: &Provider) -> Result<HttpPeer, UpstreamError> {
        let addr = resolver::resolve(provider, self.cfg.connect_timeout.get())
            .await
            .map_err(UpstreamError::Connect)?;
        Ok(self.peer_for(provider, addr))
    }

    pub fn peer_for(&self, provider: &Provider, addr: std::net::SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, provider.tls, provider.host.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.cfg.connect_timeout.get());
        o.total_connection_timeout = Some(self.cfg.connect_timeout.get());
        o.idle_timeout = Some(self.cfg.idle_conn_timeout.get());
        // Timeouts of reads are applied per phase below (first byte vs. idle gap).
        o.read_timeout = None;
        o.write_timeout = Some(self.cfg.connect_timeout.get().max(Duration::from_secs(30)));
        o.verify_cert = true;
        o.verify_hostname = true;
        peer
    }

    /// Builds the upstream request header: provider path, Host, auth, configured headers,
    /// request id. Nothing from the caller is copied unless passed in `extra`.
    ///
    /// A plain `HeaderMap` of typed names, converted once (see `respond::header`: Pingora's
    /// `insert_header` re-parses and copies every name for its case map, which HTTP/1.1
    /// upstreams do not need).
    pub fn request_header(
        provider: &Provider,
        req: &UpstreamRequest<'_>,
    ) -> Result<RequestHeader, UpstreamError> {
        let invalid = |e: String| UpstreamError::Connect(format!("invalid upstream request: {e}"));
        let mut map =
            http::HeaderMap::with_capacity(8 + provider.headers.len() + req.headers.len());
        map.insert(http::header::HOST, provider.host_value.clone());
        if let Some((name, value)) = provider.auth_header() {
            map.insert(name.clone(), value.clone());
        }
        for (k, v) in &provider.headers {
            map.insert(k.clone(), v.clone());
        }
        for (k, v) in req.headers {
            map.insert(k.clone(), v.clone());
        }
        map.insert(
            crate::proxy::respond::X_REQUEST_ID,
            HeaderValue::from_str(req.request_id).map_err(|e| invalid(e.to_string()))?,
        );
        if req.method != Method::GET || !req.body.is_empty() {
            map.insert(http::header::CONTENT_LENGTH, req.body.len().into());
        }
        match http::uri::PathAndQuery::try_from(req.path) {
            Ok(pq) => {
                let (mut parts, ()) = http::Request::new(()).into_parts();
                parts.method = req.method.clone();
                parts.uri = http::Uri::from(pq);
                parts.headers = map;
                Ok(RequestHeader::from(parts))
            }
            // A path the URI type refuses is still sent as it is (Pingora keeps raw paths).
            Err(_) => {
                let mut h = RequestHeader::build_no_case(
                    req.method.clone(),
                    req.path.as_bytes(),
                    Some(map.len()),
                )
                .map_err(|e| invalid(e.to_string()))?;
                for (k, v) in map {
                    if let Some(k) = k {
                        let _ = h.insert_header(k, v);
                    }
                }
                Ok(h)
            }
        }
    }

    /// Sends the request and waits for the response headers.
    ///
    /// A pooled connection the upstream already closed fails on first use; that case (reused
    /// connection, nothing received) is retried once on a fresh connection.
    pub async fn send(
        &self,
        provider: &Provider,
        req: &UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut t = req
            .timeouts
            .copied()
            .unwrap_or_else(|| self.default_timeouts());
        if let Some(d) = t.deadline {
            // DNS and connect get what is left of the request's total time, no more.
            let left = d.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(UpstreamError::Deadline);
            }
            t.connect = t.connect.min(left);
        }
        let past_deadline =
            |t: &Timeouts| t.deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        let addr = match resolver::resolve(provider, t.connect).await {
            Ok(a) => a,
            Err(_) if past_deadline(&t) => return Err(UpstreamError::Deadline),
            Err(e) => return Err(UpstreamError::Connect(e)),
        };
        let mut peer = self.peer_for(provider, addr);
        peer.options.connection_timeout = Some(t.connect);
        peer.options.total_connection_timeout = Some(t.connect);
        // Built before connecting (an invalid request never takes a connection); rebuilt only
        // for the rare re-send on a fresh connection, never cloned.
        let mut header = Some(Self::request_header(provider, req)?);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let header = match header.take() {
                Some(h) => h,
                None => Self::request_header(provider, req)?,
            };
            let (mut session, reused) = match self.connect(&peer).await {
                Ok(s) => s,
                Err(_) if past_deadline(&t) => return Err(UpstreamError::Deadline),
                Err(e) => return Err(UpstreamError::Connect(e.to_string())),
            };
            let sent_at = std::time::Instant::now();
            match self.exchange(&mut session, header, &req.body, &t).await {
                Ok(()) => {
                    return Ok(UpstreamResponse {
                        conn: Box::new(Connection { session, peer }),
                        addr,
                        idle_timeout: t.stream_idle,
                        deadline: t.deadline,
                        retries: attempt - 1,
                    })
                }
                // A pooled connection the upstream already closed fails at once, before anything
                // was processed: only then is the request re-sent (a POST that may have run,
                // e.g. reset after minutes of generation, is never repeated).
                Err((e, stale))
                    if reused
                        && attempt == 1
                        && stale
                        && sent_at.elapsed() < Duration::from_secs(1) =>
                {
                    log::debug!(
                        "stale pooled connection to {}: {e:?}; retrying",
                        provider.name
                    );
                    continue;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// A pooled connection to `peer`, else a new one (always HTTP/1: `release` relies on it).
    /// On a miss Pingora looks in the pool once more before connecting. The connect is boxed
    /// while it runs: its future (the TLS handshake's state) is most of a request's, and the
    /// future of every call would otherwise carry it, and be copied whole into each box and
    /// select around it, even when the pool answers (issue 22: a 20 KB copy per move, several
    /// moves per request).
    async fn connect(&self, peer: &HttpPeer) -> pingora::Result<(HttpSession, bool)> {
        if let Some(h1) = self.connector.reused_http_session(peer).await {
            return Ok((HttpSession::H1(h1), true));
        }
        let (h1, reused) = Box::pin(self.connector.get_http_session(peer)).await?;
        Ok((HttpSession::H1(h1), reused))
    }

    /// Sends the request and reads the final response head. The error's flag says whether the
    /// connection looked stale (failed while writing, or closed before any response byte).
    async fn exchange(
        &self,
        session: &mut HttpSession,
        header: RequestHeader,
        body: &Bytes,
        t: &Timeouts,
    ) -> Result<(), (UpstreamError, bool)> {
        let write_err = |e: Box<pingora::Error>| (UpstreamError::Io(e.to_string()), true);
        session
            .write_request_header(Box::new(header))
            .await
            .map_err(write_err)?;
        if !body.is_empty() {
            session
                .write_request_body(body.clone(), true)
                .await
                .map_err(write_err)?;
        }
        session.finish_request_body().await.map_err(write_err)?;
        let first_byte = tokio::time::Instant::now() + t.first_byte;
        let (deadline, on_timeout) = match t.deadline {
            Some(d) if d < first_byte => (d, UpstreamError::Deadline),
            _ => (first_byte, UpstreamError::FirstByteTimeout),
        };
        loop {
            match tokio::time::timeout_at(deadline, session.read_response_header()).await {
                Err(_) => return Err((on_timeout, false)),
                Ok(Err(e)) => {
                    let stale = matches!(e.etype(), pingora::ErrorType::ConnectionClosed);
                    return Err((UpstreamError::Io(e.to_string()), stale));
                }
                Ok(Ok(())) => {
                    // Skip interim responses (100 Continue, 103 Early Hints): the answer follows.
                    let status = session.response_header().map_or(0, |h| h.status.as_u16());
                    if (100..200).contains(&status) && status != 101 {
                        continue;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Returns a fully read response's connection to the pool.
    pub async fn release(&self, mut resp: UpstreamResponse) {
        if resp.conn.session.response_done() {
            let idle = Some(self.cfg.idle_conn_timeout.get());
            let Connection { session, peer } = *resp.conn;
            // `connect` makes HTTP/1 sessions only.
            if let HttpSession::H1(h1) = session {
                self.connector.release_http_session(h1, &peer, idle).await;
            }
        } else {
            resp.conn.session.shutdown().await;
        }
    }
}

/// The connection a response arrived on, and the peer it returns to the pool under.
struct Connection {
    session: HttpSession,
    peer: HttpPeer,
}

impl UpstreamResponse {
    pub fn header(&self) -> &ResponseHeader {
        self.conn
            .session
            .response_header()
            .expect("response header was read")
    }

    pub fn status(&self) -> u16 {
        self.header().status.as_u16()
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header()
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
    }

    pub fn is_event_stream(&self) -> bool {
        self.header_str("content-type").is_some_and(|c| {
            c.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
    }

    /// The next body chunk; `None` at the end. Fails if the upstream is silent longer than the
    /// idle timeout.
    pub async fn read_chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        let idle = tokio::time::Instant::now() + self.idle_timeout;
        let (until, on_timeout) = match self.deadline {
            Some(d) if d < idle => (d, UpstreamError::Deadline),
            _ => (idle, UpstreamError::IdleTimeout),
        };
        match tokio::time::timeout_at(until, self.conn.session.read_response_body()).await {
            Err(_) => Err(on_timeout),
            Ok(Err(e)) => Err(UpstreamError::Io(e.to_string())),
            Ok(Ok(b)) => Ok(b),
        }
    }

    /// Reads the whole body (non-streaming responses), up to `limit` bytes.
    pub async fn read_all(&mut self, limit: usize) -> Result<Bytes, UpstreamError> {
        let mut first: Option<Bytes> = None;
        let mut buf = BytesMut::new();
        while let Some(chunk) = self.read_chunk().await? {
            if first.is_none() && buf.is_empty() {
                first = Some(chunk);
                continue;
            }
            if let Some(f) = first.take() {
                buf.extend_from_slice(&f);
            }
            if buf.len() + chunk.len() > limit {
                return Err(UpstreamError::TooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
        let out = match first {
            Some(f) => f,
            None => buf.freeze(),
        };
        if out.len() > limit {
            return Err(UpstreamError::TooLarge);
        }
        Ok(out)
    }
}
