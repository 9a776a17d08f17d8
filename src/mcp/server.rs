//! The gateway as an MCP server: `/mcp`, streamable HTTP, on Pingora.
//!
//! Both generations of the protocol on one endpoint, told apart as the reference SDK does: a
//! request whose `MCP-Protocol-Version` header names a version without the initialize handshake
//! (2026-07-28) is stateless (every request carries `_meta` with its version and capabilities,
//! `Mcp-Method`/`Mcp-Name` headers must match the body, `server/discover`, results with
//! `resultType`, `subscriptions/listen` for `list_changed`); anything else is the handshake
//! protocol (2024-11-05 to 2025-11-25: `initialize` issues an `Mcp-Session-Id`, which later
//! requests must carry; GET opens the session's notification stream; DELETE ends it; batches in
//! 2025-03-26).
//!
//! The transport is the gateway's own: the request body is read from the Pingora session and
//! the answer written to it, as JSON or as an SSE stream (progress notifications, then the
//! result). rmcp provides the model types (tools, results, progress); no second HTTP framework
//! sits on the data path. Tools come from [`super::exposed`]; a call's progress is passed on
//! from the upstream server, and a client that hangs up (or, in the handshake protocol, sends
//! `notifications/cancelled`) cancels the upstream call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use pingora::proxy::Session;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::exposed::{Exposed, GatewayTool, Target};
use crate::errors::{ApiError, Code};
use crate::proxy::{body, respond, Gateway, RequestCtx};

/// The stateless revision.
pub const MODERN: &str = "2026-07-28";
/// Versions with the initialize handshake, newest first.
pub const LEGACY: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// Largest request body (a tool call's arguments).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Tools per `tools/list` page.
const PAGE: usize = 100;
/// Sessions kept at once; the longest idle goes first when full.
const MAX_SESSIONS: usize = 10_000;
/// A session unused this long is forgotten.
const SESSION_IDLE: Duration = Duration::from_secs(3600);
/// SSE comments on an otherwise quiet stream (proxies cut idle connections).
const KEEPALIVE: Duration = Duration::from_secs(15);

const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
const META_SUBSCRIPTION: &str = "io.modelcontextprotocol/subscriptionId";

// JSON-RPC and MCP error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;
const HEADER_MISMATCH: i64 = -32020;
const UNSUPPORTED_VERSION: i64 = -32022;
/// A call refused by the key's limits (the range the JSON-RPC spec leaves to servers).
const RATE_LIMITED: i64 = -32029;
const CANCELLED: i64 = -32800;

/// A JSON-RPC error, with the HTTP status it travels with (the stateless protocol gives errors
/// statuses; the handshake protocol answers 200).
#[derive(Debug)]
pub struct RpcError {
    code: i64,
    message: String,
    data: Option<Value>,
    status: u16,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> RpcError {
        let status = match code {
            METHOD_NOT_FOUND => 404,
            INVALID_PARAMS | HEADER_MISMATCH | UNSUPPORTED_VERSION | INVALID_REQUEST
            | PARSE_ERROR => 400,
            RATE_LIMITED => 429,
            _ => 500,
        };
        RpcError {
            code,
            message: message.into(),
            data: None,
            status,
        }
    }

    fn data(mut self, d: Value) -> RpcError {
        self.data = Some(d);
        self
    }

    fn to_json(&self, id: &Value) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.data {
            e["data"] = d.clone();
        }
        json!({"jsonrpc": "2.0", "id": id, "error": e})
    }
}

struct SessionState {
    /// The principal that opened it (another caller cannot use it).
    owner: Option<String>,
    version: String,
    last_used: Instant,
    /// Calls in flight, by JSON-RPC id: `notifications/cancelled` ends them.
    calls: HashMap<String, oneshot::Sender<()>>,
    /// Told when the session is deleted (its GET stream ends).
    closed: tokio::sync::watch::Sender<bool>,
}

/// `/mcp`'s state: the handshake protocol's sessions, and the client for the gateway's own
/// tools (which call the gateway over loopback, as the caller).
pub struct McpServer {
    sessions: Mutex<HashMap<String, SessionState>>,
    loopback: super::loopback::Loopback,
}

/// What one request knows about its caller.
struct Caller<'a> {
    gw: &'a Gateway,
    principal: Option<crate::auth::Principal>,
    /// The caller's credential headers, for the gateway tools' loopback calls.
    credentials: Vec<(http::HeaderName, http::HeaderValue)>,
    request_id: &'a str,
    modern: bool,
    session: Option<String>,
}

fn header<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// A header value as the stateless protocol sends values that are not header-safe
/// (`=?base64?...?=`).
fn decode_header_value(v: &str) -> String {
    use base64::Engine;
    if let Some(b) = v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b) {
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    v.to_string()
}

fn id_key(id: &Value) -> String {
    id.to_string()
}

impl McpServer {
    pub fn new(cfg: &crate::config::Config) -> McpServer {
        McpServer {
            sessions: Mutex::new(HashMap::new()),
            loopback: super::loopback::Loopback::new(cfg),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionState>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session for `owner`; its id.
    fn open(&self, owner: Option<String>, version: &str) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut s = self.sessions();
        let now = Instant::now();
        s.retain(|_, v| now.duration_since(v.last_used) < SESSION_IDLE);
        if s.len() >= MAX_SESSIONS {
            if let Some(oldest) = s
                .iter()
                .min_by_key(|(_, v)| v.last_used)
                .map(|(k, _)| k.clone())
            {
                s.remove(&oldest);
            }
        }
        s.insert(
            id.clone(),
            SessionState {
                owner,
                version: version.to_string(),
                last_used: now,
                calls: HashMap::new(),
                closed: tokio::sync::watch::channel(false).0,
            },
        );
        id
    }

    /// The session named by the request, if it exists and belongs to this caller.
    fn touch(&self, id: &str, owner: Option<&str>) -> Option<String> {
        let mut s = self.sessions();
        let st = s.get_mut(id)?;
        if st.owner.as_deref() != owner || st.last_used.elapsed() >= SESSION_IDLE {
            return None;
        }
        st.last_used = Instant::now();
        Some(st.version.clone())
    }
}

/// Serves `/mcp` (every answer is written here).
pub async fn handle(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) {
    let method = session.req_header().method.clone();
    let r = match method {
        Method::POST => post(gw, session, ctx).await,
        Method::GET => get(gw, session, ctx).await,
        Method::DELETE => delete(gw, session, ctx).await,
        _ => Err(ApiError::of(
            Code::MethodNotAllowed,
            "/mcp takes POST, GET and DELETE",
        )),
    };
    if let Err(e) = r {
        respond::error(session, ctx, &e).await;
    }
}

fn principal_id(ctx: &RequestCtx) -> Option<String> {
    ctx.caller.principal.as_ref().map(|p| p.id.clone())
}

fn credentials(session: &Session) -> Vec<(http::HeaderName, http::HeaderValue)> {
    ["authorization", "x-api-key", "api-key"]
        .iter()
        .filter_map(|n| {
            let v = session.req_header().headers.get(*n)?;
            Some((http::HeaderName::from_static(n), v.clone()))
        })
        .collect()
}

async fn write_json(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    body: &Value,
    session_id: Option<&str>,
) {
    let mut h = respond::header(status, "application/json", ctx);
    if let Some(id) = session_id {
        let _ = h.insert_header("mcp-session-id", id);
    }
    let body = Bytes::from(serde_json::to_vec(body).expect("serializes"));
    let _ = respond::full(session, ctx, h, body).await;
}

async fn accepted(session: &mut Session, ctx: &mut RequestCtx) {
    let h = respond::header(202, "application/json", ctx);
    let _ = respond::full(session, ctx, h, Bytes::new()).await;
}

/// Opens an SSE answer.
async fn sse_head(
    session: &mut Session,
    ctx: &mut RequestCtx,
    session_id: Option<&str>,
) -> pingora::Result<()> {
    let mut h = respond::header(200, "text/event-stream", ctx);
    let _ = h.insert_header(http::header::CACHE_CONTROL, "no-cache");
    let _ = h.insert_header("x-accel-buffering", "no");
    if let Some(id) = session_id {
        let _ = h.insert_header("mcp-session-id", id);
    }
    ctx.answer.status = 200;
    session.write_response_header(Box::new(h), false).await
}

async fn sse_event(session: &mut Session, ctx: &mut RequestCtx, v: &Value) -> bool {
    let text = format!("event: message\ndata: {v}\n\n");
    ctx.answer.bytes_out += text.len();
    session
        .write_response_body(Some(Bytes::from(text)), false)
        .await
        .is_ok()
}

async fn sse_comment(session: &mut Session) -> bool {
    session
        .write_response_body(Some(Bytes::from_static(b": keep-alive\n\n")), false)
        .await
        .is_ok()
}

async fn sse_end(session: &mut Session) {
    let _ = session.write_response_body(Some(Bytes::new()), true).await;
}

async fn post(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), ApiError> {
    let limit = gw.cfg.server.body_timeout.get();
    let raw = tokio::time::timeout(limit, body::read_limited(session, MAX_BODY))
        .await
        .map_err(|_| {
            session.set_keepalive(None);
            ApiError::of(Code::BodyTimeout, "Timed out reading the request body")
        })??;
    ctx.bytes_in = raw.len();
    let msg: Value = match serde_json::from_slice(&raw) {
        Ok(v) => v,
        Err(e) => {
            let err = RpcError::new(PARSE_ERROR, format!("Parse error: {e}"));
            write_json(session, ctx, 400, &err.to_json(&Value::Null), None).await;
            return Ok(());
        }
    };
    let version = header(session, "mcp-protocol-version").map(str::to_string);
    let modern = version.as_deref().is_some_and(|v| !LEGACY.contains(&v));
    let caller = Caller {
        gw,
        principal: None,
        credentials: credentials(session),
        request_id: "",
        modern,
        session: None,
    };
    if modern {
        post_modern(caller, session, ctx, msg, version.unwrap_or_default()).await
    } else {
        post_legacy(caller, session, ctx, msg, version).await
    }
}

/// A stateless (2026-07-28) request.
async fn post_modern(
    mut caller: Caller<'_>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    msg: Value,
    version: String,
) -> Result<(), ApiError> {
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let fail = |e: RpcError| (e.status, e.to_json(&id));
    let checked = (|| {
        if version != MODERN {
            return Err(
                RpcError::new(UNSUPPORTED_VERSION, "Unsupported protocol version")
                    .data(json!({"supported": supported_versions(), "requested": version})),
            );
        }
        let method = msg
            .get("method")
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::new(INVALID_REQUEST, "Expected one JSON-RPC request"))?;
        let header_method = header(session, "mcp-method").map(decode_header_value);
        if header_method.as_deref() != Some(method) {
            return Err(RpcError::new(
                HEADER_MISMATCH,
                "The Mcp-Method header must name the body's method",
            ));
        }
        Ok(method.to_string())
    })();
    let method = match checked {
        Ok(m) => m,
        Err(e) => {
            let (status, body) = fail(e);
            write_json(session, ctx, status, &body, None).await;
            return Ok(());
        }
    };
    // Notifications and responses need nothing from the stateless server.
    if msg.get("id").is_none() {
        accepted(session, ctx).await;
        return Ok(());
    }
    let params = msg.get("params").cloned().unwrap_or(json!({}));
    let meta = params.get("_meta").and_then(Value::as_object);
    let meta_ok = meta.is_some_and(|m| {
        m.get(META_VERSION).and_then(Value::as_str).is_some()
            && m.get(META_CAPABILITIES).is_some_and(Value::is_object)
    });
    if !meta_ok {
        let e = RpcError::new(
            INVALID_PARAMS,
            format!("_meta must carry {META_VERSION} and {META_CAPABILITIES}"),
        );
        let (status, body) = fail(e);
        write_json(session, ctx, status, &body, None).await;
        return Ok(());
    }
    if meta
        .and_then(|m| m.get(META_VERSION))
        .and_then(Value::as_str)
        != Some(MODERN)
    {
        let e = RpcError::new(
            HEADER_MISMATCH,
            "MCP-Protocol-Version and _meta's protocol version differ",
        );
        let (status, body) = fail(e);
        write_json(session, ctx, status, &body, None).await;
        return Ok(());
    }
    if method == "tools/call" {
        let name = params.get("name").and_then(Value::as_str);
        let header_name = header(session, "mcp-name").map(decode_header_value);
        if name.is_none() || header_name.as_deref() != name {
            let e = RpcError::new(
                HEADER_MISMATCH,
                "The Mcp-Name header must name the tool called",
            );
            let (status, body) = fail(e);
            write_json(session, ctx, status, &body, None).await;
            return Ok(());
        }
    }
    caller.principal = ctx.caller.principal.clone();
    let request_id = ctx.request_id.clone();
    caller.request_id = &request_id;
    if method == "subscriptions/listen" {
        return listen(caller, session, ctx, &id, &params).await;
    }
    answer(caller, session, ctx, &method, &id, &params, None).await;
    Ok(())
}

/// A handshake-protocol message (or a 2025-03-26 batch).
async fn post_legacy(
    mut caller: Caller<'_>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    msg: Value,
    version: Option<String>,
) -> Result<(), ApiError> {
    let gw = caller.gw;
    let owner = principal_id(ctx);
    let batch = msg.is_array();
    if batch && version.as_deref().is_some_and(|v| v != "2025-03-26") {
        let e = RpcError::new(INVALID_REQUEST, "Batches were removed after 2025-03-26");
        write_json(session, ctx, 400, &e.to_json(&Value::Null), None).await;
        return Ok(());
    }
    let messages = match msg {
        Value::Array(a) if !a.is_empty() => a,
        Value::Object(_) => vec![msg],
        _ => {
            let e = RpcError::new(INVALID_REQUEST, "Expected a JSON-RPC message");
            write_json(session, ctx, 400, &e.to_json(&Value::Null), None).await;
            return Ok(());
        }
    };
    let initialize = messages
        .iter()
        .position(|m| m.get("method").and_then(Value::as_str) == Some("initialize"));
    let sid = header(session, "mcp-session-id").map(str::to_string);
    // Every message but `initialize` belongs to a session.
    let session_id = match (initialize, &sid) {
        (Some(i), _) => {
            let m = &messages[i];
            let id = m.get("id").cloned().unwrap_or(Value::Null);
            let asked = m
                .pointer("/params/protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            // The asked version when known, else the newest the server speaks.
            let v = if LEGACY.contains(&asked) {
                asked
            } else {
                LEGACY[0]
            };
            let new = gw.mcp_server.open(owner.clone(), v);
            let result = json!({
                "protocolVersion": v,
                "capabilities": capabilities(),
                "serverInfo": server_info(),
                "instructions": "Tools of the MCP servers behind this gateway, and the gateway's own: gateway_chat calls a model through the gateway, gateway_list_models lists them."
            });
            let body = json!({"jsonrpc": "2.0", "id": id, "result": result});
            if messages.len() == 1 {
                write_json(session, ctx, 200, &body, Some(&new)).await;
                return Ok(());
            }
            let e = RpcError::new(INVALID_REQUEST, "initialize must be sent alone");
            write_json(session, ctx, 400, &e.to_json(&id), None).await;
            return Ok(());
        }
        (None, None) => {
            let e = RpcError::new(
                INVALID_REQUEST,
                "Bad Request: Mcp-Session-Id header is required (send initialize first)",
            );
            write_json(session, ctx, 400, &e.to_json(&Value::Null), None).await;
            return Ok(());
        }
        (None, Some(s)) => {
            if gw.mcp_server.touch(s, owner.as_deref()).is_none() {
                let e = RpcError::new(INVALID_REQUEST, "Session not found");
                write_json(session, ctx, 404, &e.to_json(&Value::Null), None).await;
                return Ok(());
            }
            s.clone()
        }
    };
    caller.session = Some(session_id.clone());
    let request_id = ctx.request_id.clone();
    caller.request_id = &request_id;
    caller.principal = ctx.caller.principal.clone();
    // Notifications and client responses first.
    for m in &messages {
        if m.get("id").is_some() && m.get("method").is_some() {
            continue;
        }
        if m.get("method").and_then(Value::as_str) == Some("notifications/cancelled") {
            if let Some(rid) = m.pointer("/params/requestId") {
                let tx = gw
                    .mcp_server
                    .sessions()
                    .get_mut(&session_id)
                    .and_then(|s| s.calls.remove(&id_key(rid)));
                if let Some(tx) = tx {
                    let _ = tx.send(());
                }
            }
        }
    }
    let requests: Vec<&Value> = messages
        .iter()
        .filter(|m| m.get("id").is_some() && m.get("method").is_some())
        .collect();
    match requests.as_slice() {
        [] => accepted(session, ctx).await,
        [one] if !batch => {
            let method = one["method"].as_str().unwrap_or("").to_string();
            let params = one.get("params").cloned().unwrap_or(json!({}));
            let id = one["id"].clone();
            let (cancel_tx, cancel_rx) = oneshot::channel();
            if let Some(s) = gw.mcp_server.sessions().get_mut(&session_id) {
                s.calls.insert(id_key(&id), cancel_tx);
            }
            answer(caller, session, ctx, &method, &id, &params, Some(cancel_rx)).await;
            if let Some(s) = gw.mcp_server.sessions().get_mut(&session_id) {
                s.calls.remove(&id_key(&id));
            }
        }
        many => {
            // A batch: answered together, in order, as JSON.
            let mut out = Vec::with_capacity(many.len());
            for m in many {
                let method = m["method"].as_str().unwrap_or("");
                let params = m.get("params").cloned().unwrap_or(json!({}));
                let id = m["id"].clone();
                out.push(match dispatch(&caller, method, &params, None).await {
                    Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
                    Err(e) => e.to_json(&id),
                });
            }
            write_json(session, ctx, 200, &Value::Array(out), None).await;
        }
    }
    Ok(())
}

/// Answers one request: as JSON, or as an SSE stream when the caller asked for progress
/// (`_meta.progressToken`) on a tool call. A client that hangs up, or a cancellation, drops
/// the work (which cancels an upstream tool call).
async fn answer(
    caller: Caller<'_>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    method: &str,
    id: &Value,
    params: &Value,
    cancel: Option<oneshot::Receiver<()>>,
) {
    let token = params.pointer("/_meta/progressToken").cloned();
    let streamed = method == "tools/call" && token.is_some();
    let (ptx, mut prx) = mpsc::unbounded_channel::<Value>();
    let work = dispatch(&caller, method, params, streamed.then_some(ptx));
    tokio::pin!(work);
    let cancelled = async move {
        match cancel {
            Some(rx) => {
                // A dropped sender (the call ended) is not a cancellation.
                if rx.await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(cancelled);
    let session_id = caller.session.clone();
    if streamed && sse_head(session, ctx, session_id.as_deref()).await.is_err() {
        ctx.client_left();
        return;
    }
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    enum Ev {
        Done(Result<Value, RpcError>),
        Progress(Value),
        Cancelled,
        Gone,
        Tick,
    }
    loop {
        let ev = tokio::select! {
            r = &mut work => Ev::Done(r),
            Some(p) = prx.recv() => Ev::Progress(p),
            _ = &mut cancelled => Ev::Cancelled,
            _ = keepalive.tick(), if streamed => Ev::Tick,
            _ = session.as_downstream_mut().read_body_or_idle(true) => Ev::Gone,
        };
        match ev {
            Ev::Gone => {
                session.set_keepalive(None);
                ctx.client_left();
                return;
            }
            Ev::Tick => {
                if !sse_comment(session).await {
                    ctx.client_left();
                    return;
                }
            }
            Ev::Progress(p) => {
                let mut p = p;
                if let (Some(t), Some(o)) = (&token, p.as_object_mut()) {
                    o.insert("progressToken".into(), t.clone());
                }
                let n = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": p});
                if !sse_event(session, ctx, &n).await {
                    ctx.client_left();
                    return;
                }
            }
            Ev::Cancelled | Ev::Done(_) => {
                let (status, body) = match ev {
                    Ev::Done(Ok(result)) => {
                        (200, json!({"jsonrpc": "2.0", "id": id, "result": result}))
                    }
                    Ev::Done(Err(e)) => {
                        let status = if caller.modern { e.status } else { 200 };
                        (status, e.to_json(id))
                    }
                    _ => (
                        200,
                        RpcError::new(CANCELLED, "Request cancelled").to_json(id),
                    ),
                };
                if status >= 400 {
                    ctx.answer.error = Some("mcp_error");
                }
                if streamed {
                    sse_event(session, ctx, &body).await;
                    sse_end(session).await;
                } else {
                    write_json(session, ctx, status, &body, session_id.as_deref()).await;
                }
                return;
            }
        }
    }
}

fn server_info() -> Value {
    json!({"name": "inference-gateway", "title": "Inference Gateway", "version": env!("CARGO_PKG_VERSION")})
}

fn capabilities() -> Value {
    json!({"tools": {"listChanged": true}})
}

fn supported_versions() -> Vec<&'static str> {
    std::iter::once(MODERN).chain(LEGACY).collect()
}

/// A stateless result: `resultType`, and the server's identity in `_meta`.
fn complete(mut v: Value, modern: bool) -> Value {
    if modern {
        if let Some(o) = v.as_object_mut() {
            o.insert("resultType".into(), json!("complete"));
            let meta = o.entry("_meta").or_insert_with(|| json!({}));
            meta[META_SERVER_INFO] = server_info();
        }
    }
    v
}

fn exposed(caller: &Caller<'_>) -> Exposed {
    let catalog = caller
        .gw
        .mcp
        .as_ref()
        .map(|h| h.catalog())
        .unwrap_or_default();
    let allow = caller
        .principal
        .as_ref()
        .map(|p| p.limits.tools.as_slice())
        .unwrap_or(&[]);
    let a2a = caller
        .gw
        .a2a
        .as_ref()
        .map(|h| h.catalog())
        .unwrap_or_default();
    Exposed::build(catalog, a2a, allow)
}

/// One request's result.
async fn dispatch(
    caller: &Caller<'_>,
    method: &str,
    params: &Value,
    progress: Option<mpsc::UnboundedSender<Value>>,
) -> Result<Value, RpcError> {
    let modern = caller.modern;
    match method {
        "ping" if !modern => Ok(json!({})),
        "server/discover" => Ok(complete(
            json!({
                "supportedVersions": supported_versions(),
                "capabilities": capabilities(),
                "instructions": "Tools of the MCP servers behind this gateway, and the gateway's own.",
                "ttlMs": 60_000,
                "cacheScope": "private",
            }),
            true,
        )),
        "tools/list" => {
            let tools = exposed(caller);
            let start = match params.get("cursor") {
                None | Some(Value::Null) => 0,
                Some(Value::String(c)) => c
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n <= tools.tools.len())
                    .ok_or_else(|| RpcError::new(INVALID_PARAMS, "Invalid cursor"))?,
                Some(_) => return Err(RpcError::new(INVALID_PARAMS, "Invalid cursor")),
            };
            let page: Vec<Value> = tools
                .tools
                .iter()
                .skip(start)
                .take(PAGE)
                .map(|t| t.definition.clone())
                .collect();
            let mut r = json!({"tools": page});
            if start + PAGE < tools.tools.len() {
                r["nextCursor"] = json!((start + PAGE).to_string());
            }
            if modern {
                // The list depends on the caller's key (its allowlist).
                r["ttlMs"] = json!(0);
                r["cacheScope"] = json!("private");
            }
            Ok(complete(r, modern))
        }
        "tools/call" => call(caller, params, progress)
            .await
            .map(|r| complete(r, modern)),
        "initialize" => Err(RpcError::new(
            INVALID_REQUEST,
            "initialize opens a session of the handshake protocol",
        )),
        _ => Err(RpcError::new(
            METHOD_NOT_FOUND,
            format!("Method not found: {method}"),
        )),
    }
}

/// `tools/call`: counted against the key's RPM, run, measured.
async fn call(
    caller: &Caller<'_>,
    params: &Value,
    progress: Option<mpsc::UnboundedSender<Value>>,
) -> Result<Value, RpcError> {
    let gw = caller.gw;
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::new(INVALID_PARAMS, "tools/call needs a tool name"))?;
    let arguments = match params.get("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(RpcError::new(
                INVALID_PARAMS,
                "arguments must be a JSON object",
            ))
        }
    };
    let tools = exposed(caller);
    let Some(tool) = tools.get(name) else {
        return Err(RpcError::new(
            INVALID_PARAMS,
            format!("Unknown tool: {name}"),
        ));
    };
    // Each call counts against the key's RPM (a request of its own); no tokens.
    let admission = match &caller.principal {
        Some(p) if crate::limits::Limiter::applies(&p.limits) => {
            let reserve = crate::limits::Reserve {
                tokens: 0,
                cost_usd: 0.0,
            };
            match gw.limiter.admit(p, reserve, caller.request_id).await {
                Ok((adm, _)) => Some(adm),
                Err(denied) => {
                    let (err, _) = crate::exchange::admission::limit_error(p, denied, 0);
                    let mut e = RpcError::new(RATE_LIMITED, err.message);
                    if let Some(ra) = err.retry_after {
                        e = e.data(json!({"retry_after_seconds": ra.as_secs().max(1)}));
                    }
                    return Err(e);
                }
            }
        }
        _ => None,
    };
    let started = Instant::now();
    let result = match &tool.target {
        Target::Mcp(i) => {
            let hub = gw.mcp.as_ref().expect("a catalogue tool has a hub");
            let (tx, mut rx) = mpsc::unbounded_channel();
            let forward = progress.map(|out| {
                tokio::spawn(async move {
                    while let Some(p) = rx.recv().await {
                        let v = serde_json::to_value(&p).unwrap_or_default();
                        if out.send(v).is_err() {
                            break;
                        }
                    }
                })
            });
            let tx = forward.as_ref().map(|_| tx);
            let r = hub.call_for_client(tools.mcp_tool(*i), arguments, tx).await;
            if let Some(f) = forward {
                // Whatever progress arrived before the result goes out first.
                let _ = tokio::time::timeout(Duration::from_millis(50), f).await;
            }
            match r {
                Ok(result) => serde_json::to_value(&result)
                    .map_err(|e| RpcError::new(INTERNAL_ERROR, e.to_string())),
                Err(e) => Ok(tool_error(&e)),
            }
        }
        Target::A2a(i) => {
            let hub = gw.a2a.as_ref().expect("an A2A tool has a hub");
            let args = Value::Object(arguments).to_string();
            let out = hub.call(&tools.a2a.tools()[*i], &args).await;
            Ok(json!({"content": [{"type": "text", "text": out.content}],
                "isError": out.error.is_some()}))
        }
        Target::Gateway(g) => Ok(gateway_tool(caller, *g, &arguments).await),
    };
    if let Some(adm) = admission {
        gw.limiter.settle(&adm, 0, 0.0).await;
    }
    if let Some(m) = &gw.metrics {
        let tool_name = crate::proxy::record::bounded_tool(name);
        let labels = ["", "", tool.target.tool_type(), tool_name];
        m.tool_calls.with_label_values(&labels).inc();
        m.tool_call_duration
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64() * 1000.0);
        let failed = result
            .as_ref()
            .map_or(true, |r| r.get("isError") == Some(&Value::Bool(true)));
        if failed {
            m.tool_calls_failure
                .with_label_values(&["", "", tool.target.tool_type(), tool_name, "tool_error"])
                .inc();
        } else {
            m.tool_calls_success.with_label_values(&labels).inc();
        }
    }
    result
}

fn tool_error(text: &str) -> Value {
    json!({"content": [{"type": "text", "text": format!("Error: {text}")}], "isError": true})
}

fn tool_text(text: String, structured: Option<Value>) -> Value {
    let mut v = json!({"content": [{"type": "text", "text": text}], "isError": false});
    if let Some(s) = structured {
        v["structuredContent"] = s;
    }
    v
}

/// Runs one of the gateway's own tools as the caller (over loopback, with its credentials:
/// the gateway's keys, model lists, limits, metrics and logs all apply).
async fn gateway_tool(caller: &Caller<'_>, tool: GatewayTool, args: &Map<String, Value>) -> Value {
    let lb = &caller.gw.mcp_server.loopback;
    match tool {
        GatewayTool::ListModels => {
            match lb
                .call(Method::GET, "/v1/models", &caller.credentials, None)
                .await
            {
                Ok((200, v)) => {
                    let ids: Vec<Value> = v["data"]
                        .as_array()
                        .map(|d| d.iter().filter_map(|m| m.get("id").cloned()).collect())
                        .unwrap_or_default();
                    let text = ids
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("\n");
                    tool_text(text, Some(json!({"models": ids})))
                }
                Ok((status, v)) => tool_error(&api_error_text(status, &v)),
                Err(e) => tool_error(&e),
            }
        }
        GatewayTool::Chat => {
            let Some(model) = args.get("model").and_then(Value::as_str) else {
                return tool_error("model is required");
            };
            let mut messages: Vec<Value> = Vec::new();
            if let Some(s) = args.get("system").and_then(Value::as_str) {
                messages.push(json!({"role": "system", "content": s}));
            }
            match (
                args.get("messages"),
                args.get("prompt").and_then(Value::as_str),
            ) {
                (Some(Value::Array(m)), _) => messages.extend(m.iter().cloned()),
                (_, Some(p)) => messages.push(json!({"role": "user", "content": p})),
                _ => return tool_error("give prompt or messages"),
            }
            let mut body = json!({"model": model, "messages": messages});
            for k in ["max_tokens", "temperature"] {
                if let Some(v) = args.get(k) {
                    body[k] = v.clone();
                }
            }
            match lb
                .call(
                    Method::POST,
                    "/v1/chat/completions",
                    &caller.credentials,
                    Some(&body),
                )
                .await
            {
                Ok((200, v)) => {
                    let text = v
                        .pointer("/choices/0/message/content")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let structured = json!({"model": v.get("model"), "usage": v.get("usage"),
                        "finish_reason": v.pointer("/choices/0/finish_reason")});
                    tool_text(text, Some(structured))
                }
                Ok((status, v)) => tool_error(&api_error_text(status, &v)),
                Err(e) => tool_error(&e),
            }
        }
    }
}

fn api_error_text(status: u16, v: &Value) -> String {
    let msg = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("request failed");
    format!("the gateway answered {status}: {msg}")
}

/// `GET /mcp`: the session's notification stream (handshake protocol).
async fn get(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), ApiError> {
    let modern = header(session, "mcp-protocol-version").is_some_and(|v| !LEGACY.contains(&v));
    let Some(sid) = header(session, "mcp-session-id")
        .filter(|_| !modern)
        .map(str::to_string)
    else {
        return Err(ApiError::of(
            Code::MethodNotAllowed,
            "GET /mcp opens a session's stream (send initialize first); the stateless protocol uses subscriptions/listen",
        ));
    };
    let owner = principal_id(ctx);
    if gw.mcp_server.touch(&sid, owner.as_deref()).is_none() {
        let e = RpcError::new(INVALID_REQUEST, "Session not found");
        write_json(session, ctx, 404, &e.to_json(&Value::Null), None).await;
        return Ok(());
    }
    let closed = gw
        .mcp_server
        .sessions()
        .get(&sid)
        .map(|s| s.closed.subscribe());
    let Some(mut closed) = closed else {
        return Ok(());
    };
    if sse_head(session, ctx, Some(&sid)).await.is_err() {
        ctx.client_left();
        return Ok(());
    }
    let note = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
    notify_changes(gw, session, ctx, &note, None, &mut closed).await;
    Ok(())
}

/// Writes `note` on every change of the offered tools until the client leaves, the session is
/// closed or the gateway drains.
async fn notify_changes(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    note: &Value,
    end: Option<&Value>,
    closed: &mut tokio::sync::watch::Receiver<bool>,
) {
    let mut changes = gw.mcp.as_ref().map(|h| h.subscribe());
    let mut agent_changes = gw.a2a.as_ref().map(|h| h.subscribe());
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    let mut drain_check = tokio::time::interval(Duration::from_secs(1));
    enum Ev {
        Changed,
        Tick,
        Gone,
        End,
    }
    loop {
        let ev = tokio::select! {
            r = async {
                match changes.as_mut() {
                    Some(c) => c.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => if r { Ev::Changed } else { Ev::End },
            r = async {
                match agent_changes.as_mut() {
                    Some(c) => c.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => if r { Ev::Changed } else { Ev::End },
            _ = keepalive.tick() => Ev::Tick,
            _ = drain_check.tick() => if crate::drain::draining() { Ev::End } else { continue },
            _ = closed.changed() => Ev::End,
            _ = session.as_downstream_mut().read_body_or_idle(true) => Ev::Gone,
        };
        match ev {
            Ev::Changed => {
                if !sse_event(session, ctx, note).await {
                    ctx.client_left();
                    return;
                }
            }
            Ev::Tick => {
                if !sse_comment(session).await {
                    ctx.client_left();
                    return;
                }
            }
            Ev::Gone => {
                session.set_keepalive(None);
                ctx.client_left();
                return;
            }
            Ev::End => {
                if let Some(e) = end {
                    sse_event(session, ctx, e).await;
                }
                sse_end(session).await;
                return;
            }
        }
    }
}

/// `subscriptions/listen` (stateless protocol): a long-lived stream of `list_changed`.
async fn listen(
    caller: Caller<'_>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    id: &Value,
    params: &Value,
) -> Result<(), ApiError> {
    let wanted = params
        .pointer("/notifications/toolsListChanged")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let honoured = if wanted {
        json!({"toolsListChanged": true})
    } else {
        json!({})
    };
    if sse_head(session, ctx, None).await.is_err() {
        ctx.client_left();
        return Ok(());
    }
    let ack = json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
        "params": {"notifications": honoured, "_meta": {META_SUBSCRIPTION: id}}});
    if !sse_event(session, ctx, &ack).await {
        ctx.client_left();
        return Ok(());
    }
    let note = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
        "params": {"_meta": {META_SUBSCRIPTION: id}}});
    let end = json!({"jsonrpc": "2.0", "id": id,
        "result": {"resultType": "complete", "_meta": {META_SUBSCRIPTION: id}}});
    let (_never, mut closed) = tokio::sync::watch::channel(false);
    if wanted {
        notify_changes(caller.gw, session, ctx, &note, Some(&end), &mut closed).await;
    } else {
        // Nothing this server can send: the acknowledgement, then the end.
        sse_event(session, ctx, &end).await;
        sse_end(session).await;
    }
    Ok(())
}

/// `DELETE /mcp`: ends a handshake-protocol session.
async fn delete(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), ApiError> {
    let Some(sid) = header(session, "mcp-session-id").map(str::to_string) else {
        return Err(ApiError::of(
            Code::MethodNotAllowed,
            "DELETE /mcp ends a session: send its Mcp-Session-Id",
        ));
    };
    let owner = principal_id(ctx);
    let removed = {
        let mut s = gw.mcp_server.sessions();
        match s.get(&sid) {
            Some(st) if st.owner == owner => s.remove(&sid),
            _ => None,
        }
    };
    match removed {
        Some(st) => {
            let _ = st.closed.send(true);
            for (_, c) in st.calls {
                let _ = c.send(());
            }
            let h = respond::header(200, "application/json", ctx);
            let _ = respond::full(session, ctx, h, Bytes::new()).await;
        }
        None => {
            let e = RpcError::new(INVALID_REQUEST, "Session not found");
            write_json(session, ctx, 404, &e.to_json(&Value::Null), None).await;
        }
    }
    Ok(())
}

/// `GET /.well-known/oauth-protected-resource/mcp` (RFC 9728): `/mcp` and its issuer, when
/// OIDC is configured.
pub async fn resource_metadata(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) {
    let (Some(issuer), Some(resource)) = (&gw.cfg.auth.oidc_issuer, resource_url(gw)) else {
        let e = ApiError::of(
            Code::NotFound,
            "No protected resource metadata (OIDC is off)",
        );
        respond::error(session, ctx, &e).await;
        return;
    };
    let body = json!({
        "resource": resource,
        "authorization_servers": [issuer],
        "bearer_methods_supported": ["header"],
        "resource_name": "Inference Gateway MCP",
    });
    write_json(session, ctx, 200, &body, None).await;
}

/// A 401 on `/mcp`: with OIDC, `WWW-Authenticate` names the resource metadata (how MCP clients
/// find the issuer to sign in with).
pub async fn unauthorized(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    err: &ApiError,
) {
    ctx.answer.error = Some(err.code.unwrap_or("error"));
    let mut h = respond::header(err.status, "application/json", ctx);
    if let Some(v) = www_authenticate(gw) {
        let _ = h.insert_header(http::header::WWW_AUTHENTICATE, v.as_str());
    }
    let _ = respond::full(session, ctx, h, err.body()).await;
}

/// `<public url>/mcp`, from `server.public_url` (never from `Host`).
pub fn resource_url(gw: &Gateway) -> Option<String> {
    let base = gw.cfg.server.public_url.as_deref()?;
    Some(format!("{}/mcp", base.trim_end_matches('/')))
}

/// The `WWW-Authenticate` value of a 401 on `/mcp` when OIDC is configured.
pub fn www_authenticate(gw: &Gateway) -> Option<String> {
    gw.cfg.auth.oidc_issuer.as_ref()?;
    let base = gw.cfg.server.public_url.as_deref()?;
    Some(format!(
        "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
        base.trim_end_matches('/')
    ))
}
