//! MCP: the servers whose tools the gateway runs for the model.
//!
//! - [`McpHub`] holds one slot per configured server (streamable HTTP or stdio), the current
//!   catalogue of tools (published as an immutable snapshot, so a request reads it with one
//!   lock-free-in-practice `Arc` clone), and runs `tools/call`.
//! - [`connection`] keeps each server connected in a background service: discovery at start,
//!   reconnect with backoff, refresh on `notifications/tools/list_changed`, on reconnect and on
//!   a polling interval. The gateway serves while every server is down.
//! - [`naming`] decides the `mcp_` names the model sees.

pub mod connection;
pub mod exposed;
pub mod loopback;
pub mod naming;
pub mod server;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock};
use rmcp::service::{Peer, RoleClient};
use serde_json::{json, Map, Value};
use tokio::sync::Notify;

use crate::config::{McpConfig, McpServerConfig};

/// One configured server and what is known about it.
pub struct ServerSlot {
    pub name: String,
    pub cfg: McpServerConfig,
    pub call_timeout: Duration,
    state: RwLock<ServerState>,
    /// Woken when a call finds the connection broken: reconnect now.
    pub(crate) broken: Notify,
}

#[derive(Default)]
struct ServerState {
    peer: Option<Peer<RoleClient>>,
    /// Tools after include/exclude, as the server names them.
    tools: Vec<rmcp::model::Tool>,
    healthy: bool,
    last_error: Option<String>,
    connected_at: Option<std::time::SystemTime>,
}

/// A tool as offered to the model.
pub struct CatalogTool {
    /// `mcp_...` as the model sees it.
    pub name: String,
    /// The name on the server.
    pub original: String,
    pub server: usize,
    pub description: Option<String>,
    pub input_schema: Value,
    /// The OpenAI `tools[]` entry.
    pub definition: Value,
    pub healthy: bool,
    /// The tool as its server describes it (title, annotations, output schema: what `/mcp`
    /// passes on).
    pub spec: Arc<rmcp::model::Tool>,
}

/// The tools of every server, rebuilt whenever a server's tools or health change.
#[derive(Default)]
pub struct Catalog {
    tools: Vec<CatalogTool>,
    by_name: HashMap<String, usize>,
    healthy_tools: usize,
}

impl Catalog {
    /// Whether any tool can be offered now.
    pub fn has_available_tools(&self) -> bool {
        self.healthy_tools > 0
    }

    /// Tools of healthy servers, for injection into requests.
    pub fn openai_tools(&self) -> impl Iterator<Item = &CatalogTool> {
        self.tools.iter().filter(|t| t.healthy)
    }

    pub fn all(&self) -> &[CatalogTool] {
        &self.tools
    }

    pub fn get(&self, name: &str) -> Option<&CatalogTool> {
        self.by_name.get(name).map(|&i| &self.tools[i])
    }
}

/// The result of one `tools/call`, ready to become a `tool` message.
pub struct ToolOutcome {
    pub content: String,
    /// `error_type` label when the call failed: `tool_error` (the tool's `isError`),
    /// `timeout`, `unknown_tool`, `invalid_arguments`, `server_unavailable`, `call_error`.
    pub error: Option<&'static str>,
    pub duration: Duration,
}

type Progress = rmcp::model::ProgressNotificationParam;

/// Where a server's `notifications/progress` go: the `/mcp` call that asked for them, by the
/// progress token rmcp gave the upstream call. The token is known only once the request is
/// sent, and a fast server may report progress before the route exists: such notifications
/// wait briefly (bounded) and are delivered, in order, when the route is added.
#[derive(Default)]
pub struct ProgressTable {
    routes: HashMap<String, tokio::sync::mpsc::UnboundedSender<Progress>>,
    early: std::collections::VecDeque<(Instant, String, Progress)>,
}

impl ProgressTable {
    const EARLY_MAX: usize = 256;
    const EARLY_TTL: Duration = Duration::from_secs(5);

    pub fn deliver(&mut self, token: String, p: Progress) {
        if let Some(tx) = self.routes.get(&token) {
            let _ = tx.send(p);
            return;
        }
        // Progress of calls nobody listens to (the loop's) ages out.
        let now = Instant::now();
        while self
            .early
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > Self::EARLY_TTL)
            || self.early.len() >= Self::EARLY_MAX
        {
            self.early.pop_front();
        }
        self.early.push_back((now, token, p));
    }

    fn route(&mut self, token: String, tx: tokio::sync::mpsc::UnboundedSender<Progress>) {
        let early = std::mem::take(&mut self.early);
        for (t, tok, p) in early {
            if tok == token {
                let _ = tx.send(p);
            } else {
                self.early.push_back((t, tok, p));
            }
        }
        self.routes.insert(token, tx);
    }
}

pub type ProgressRoutes = Arc<std::sync::Mutex<ProgressTable>>;

pub struct McpHub {
    pub cfg: McpConfig,
    pub servers: Vec<Arc<ServerSlot>>,
    catalog: RwLock<Arc<Catalog>>,
    /// Bumped whenever the tool names change (`/mcp` sends `list_changed`).
    changes: tokio::sync::watch::Sender<u64>,
    pub(crate) progress: ProgressRoutes,
    /// Serialises `publish`: two servers changing at once must not publish out of order.
    publishing: std::sync::Mutex<()>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// Longest tool result put into a `tool` message; longer results are cut with a note (the
/// whole conversation is sent to the model again every round).
pub const MAX_TOOL_RESULT_BYTES: usize = 256 * 1024;

impl McpHub {
    pub fn new(cfg: &McpConfig, metrics: Option<Arc<crate::metrics::Metrics>>) -> Arc<Self> {
        let servers = cfg
            .servers
            .iter()
            .map(|s| {
                Arc::new(ServerSlot {
                    name: s.display_name(),
                    cfg: s.clone(),
                    call_timeout: s.timeout.unwrap_or(cfg.request_timeout).get(),
                    state: RwLock::new(ServerState::default()),
                    broken: Notify::new(),
                })
            })
            .collect();
        let hub = Arc::new(McpHub {
            cfg: cfg.clone(),
            servers,
            catalog: RwLock::new(Arc::new(Catalog::default())),
            changes: tokio::sync::watch::channel(0).0,
            progress: Default::default(),
            publishing: std::sync::Mutex::new(()),
            metrics,
        });
        hub.publish();
        hub
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().expect("catalog lock").clone()
    }

    /// Changes of the offered tools (a counter; `/mcp` tells its listeners).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A server connected (or refreshed its tools).
    pub(crate) fn set_connected(
        &self,
        slot: usize,
        peer: Peer<RoleClient>,
        tools: Vec<rmcp::model::Tool>,
    ) {
        let s = &self.servers[slot];
        let tools = tools
            .into_iter()
            .filter(|t| {
                naming::selected(&t.name, &self.cfg.include_tools, &self.cfg.exclude_tools)
                    && naming::selected(&t.name, &s.cfg.include_tools, &s.cfg.exclude_tools)
            })
            .collect();
        {
            let mut st = s.state.write().expect("server lock");
            if !st.healthy {
                st.connected_at = Some(std::time::SystemTime::now());
            }
            st.peer = Some(peer);
            st.tools = tools;
            st.healthy = true;
            st.last_error = None;
        }
        self.publish();
    }

    /// A server is unreachable; its tools stay known (names stay stable) but are not offered.
    pub(crate) fn set_down(&self, slot: usize, error: String) {
        let error = self.servers[slot].redact(&error);
        {
            let mut st = self.servers[slot].state.write().expect("server lock");
            st.peer = None;
            st.healthy = false;
            st.connected_at = None;
            st.last_error = Some(error);
        }
        self.publish();
    }

    /// Rebuilds the catalogue snapshot from the servers' states.
    fn publish(&self) {
        let _one_at_a_time = self.publishing.lock().expect("publish lock");
        let states: Vec<_> = self
            .servers
            .iter()
            .map(|s| s.state.read().expect("server lock"))
            .collect();
        let lists: Vec<(&str, Vec<&str>)> = self
            .servers
            .iter()
            .zip(&states)
            .map(|(s, st)| {
                (
                    s.name.as_str(),
                    st.tools.iter().map(|t| t.name.as_ref()).collect(),
                )
            })
            .collect();
        let names = naming::assign(&lists);
        let mut cat = Catalog::default();
        for (i, (st, names)) in states.iter().zip(names).enumerate() {
            for (t, name) in st.tools.iter().zip(names) {
                let schema = Value::Object((*t.input_schema).clone());
                let description = t.description.as_deref().map(str::to_string);
                let mut function = Map::new();
                function.insert("name".into(), Value::String(name.clone()));
                if let Some(d) = &description {
                    function.insert("description".into(), Value::String(d.clone()));
                }
                function.insert("parameters".into(), schema.clone());
                cat.by_name.insert(name.clone(), cat.tools.len());
                cat.healthy_tools += usize::from(st.healthy);
                cat.tools.push(CatalogTool {
                    spec: Arc::new(t.clone()),
                    definition: json!({"type": "function", "function": function}),
                    name,
                    original: t.name.to_string(),
                    server: i,
                    description,
                    input_schema: schema,
                    healthy: st.healthy,
                });
            }
        }
        if let Some(m) = &self.metrics {
            for (s, st) in self.servers.iter().zip(&states) {
                m.mcp_server_up
                    .with_label_values(&[&s.name])
                    .set(i64::from(st.healthy));
                m.mcp_tools
                    .with_label_values(&[&s.name])
                    .set(st.tools.len() as i64);
            }
        }
        drop(states);
        let offered =
            |c: &Catalog| -> Vec<String> { c.openai_tools().map(|t| t.name.clone()).collect() };
        let changed = offered(&self.catalog()) != offered(&cat);
        *self.catalog.write().expect("catalog lock") = Arc::new(cat);
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// Calls a tool for an MCP client of the gateway (`/mcp`): the server's whole result, with
    /// its progress notifications passed to `progress` (the call carries a progress token of
    /// the gateway's). Dropping the future cancels the call on the server.
    pub async fn call_for_client(
        &self,
        tool: &CatalogTool,
        arguments: Map<String, Value>,
        progress: Option<
            tokio::sync::mpsc::UnboundedSender<rmcp::model::ProgressNotificationParam>,
        >,
    ) -> Result<CallToolResult, String> {
        let slot = &self.servers[tool.server];
        let peer = slot.state.read().expect("server lock").peer.clone();
        let Some(peer) = peer else {
            return Err(format!("MCP server {} is unavailable", slot.name));
        };
        let params = CallToolRequestParams::new(tool.original.clone()).with_arguments(arguments);
        let request =
            rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(params));
        // rmcp gives every request a progress token of its own: progress is routed by it.
        let mut handle = match peer
            .send_request_with_option(request, rmcp::service::PeerRequestOptions::no_options())
            .await
        {
            Ok(h) => h,
            Err(e) => {
                slot.broken.notify_one();
                return Err(slot.redact(&e.to_string()));
            }
        };
        /// Removes the progress route, and cancels the call on the server unless it answered
        /// (the client left, the call timed out).
        struct Guard<'a> {
            routes: &'a ProgressRoutes,
            token: Option<String>,
            pending: Option<(Peer<RoleClient>, rmcp::model::RequestId)>,
        }
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                if let Some(t) = &self.token {
                    self.routes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .routes
                        .remove(t);
                }
                if let Some((peer, id)) = self.pending.take() {
                    tokio::spawn(async move {
                        let _ = peer
                            .notify_cancelled(rmcp::model::CancelledNotificationParam::new(
                                Some(id),
                                Some("the gateway's client cancelled".into()),
                            ))
                            .await;
                    });
                }
            }
        }
        let mut guard = Guard {
            routes: &self.progress,
            token: None,
            pending: Some((peer.clone(), handle.id.clone())),
        };
        if let Some(tx) = progress {
            let token = match &handle.progress_token.0 {
                rmcp::model::NumberOrString::String(s) => s.to_string(),
                rmcp::model::NumberOrString::Number(n) => n.to_string(),
            };
            self.progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .route(token.clone(), tx);
            guard.token = Some(token);
        }
        let r = tokio::time::timeout(slot.call_timeout, &mut handle.rx).await;
        if r.is_ok() {
            guard.pending = None;
        }
        drop(guard);
        match r {
            Err(_) => Err(format!(
                "tool {} timed out after {} ms",
                tool.original,
                slot.call_timeout.as_millis()
            )),
            Ok(Err(_)) => {
                slot.broken.notify_one();
                Err(format!("MCP server {} closed the connection", slot.name))
            }
            Ok(Ok(Ok(rmcp::model::ServerResult::CallToolResult(result)))) => Ok(result),
            Ok(Ok(Ok(_))) => Err(format!(
                "tool {} answered with something other than a result (user input or a task), which the gateway cannot relay",
                tool.original
            )),
            Ok(Ok(Err(e))) => {
                if peer.is_transport_closed()
                    || matches!(
                        e,
                        rmcp::ServiceError::TransportSend(_) | rmcp::ServiceError::TransportClosed
                    )
                {
                    slot.broken.notify_one();
                }
                Err(slot.redact(&e.to_string()))
            }
        }
    }

    /// Runs one tool call. Never fails: every problem becomes the outcome's text, which the
    /// model reads in the `tool` message.
    /// `catalog`: the snapshot the request offered to the model (names resolve as offered).
    pub async fn call_tool(
        &self,
        catalog: &Catalog,
        exposed: &str,
        arguments: &str,
    ) -> ToolOutcome {
        let started = Instant::now();
        let (mut content, error) = self.call_inner(catalog, exposed, arguments).await;
        if content.len() > MAX_TOOL_RESULT_BYTES {
            let total = content.len();
            let mut cut = MAX_TOOL_RESULT_BYTES;
            while !content.is_char_boundary(cut) {
                cut -= 1;
            }
            content.truncate(cut);
            content.push_str(&format!(
                "\n[truncated by the gateway: {total} bytes, {MAX_TOOL_RESULT_BYTES} shown]"
            ));
        }
        ToolOutcome {
            content,
            error,
            duration: started.elapsed(),
        }
    }

    async fn call_inner(
        &self,
        catalog: &Catalog,
        exposed: &str,
        arguments: &str,
    ) -> (String, Option<&'static str>) {
        let Some(tool) = catalog.get(exposed) else {
            return (
                format!("Error: unknown tool {exposed:?}"),
                Some("unknown_tool"),
            );
        };
        let args: Map<String, Value> = if arguments.trim().is_empty() {
            Map::new()
        } else {
            match serde_json::from_str(arguments) {
                Ok(Value::Object(m)) => m,
                Ok(_) => {
                    return (
                        "Error: the tool arguments must be a JSON object".into(),
                        Some("invalid_arguments"),
                    )
                }
                Err(e) => {
                    return (
                        format!("Error: the tool arguments are not valid JSON: {e}"),
                        Some("invalid_arguments"),
                    )
                }
            }
        };
        let slot = &self.servers[tool.server];
        let peer = slot.state.read().expect("server lock").peer.clone();
        let Some(peer) = peer else {
            return (
                format!("Error: MCP server {} is unavailable", slot.name),
                Some("server_unavailable"),
            );
        };
        let params = CallToolRequestParams::new(tool.original.clone()).with_arguments(args);
        // Dropping the call (timeout or client gone) cancels the request on the server.
        match tokio::time::timeout(slot.call_timeout, peer.call_tool_once(params)).await {
            Err(_) => (
                format!(
                    "Error: tool {exposed} timed out after {} ms",
                    slot.call_timeout.as_millis()
                ),
                Some("timeout"),
            ),
            Ok(Ok(CallToolResponse::Complete(result))) => render(&result),
            Ok(Ok(_)) => (
                format!(
                    "Error: tool {exposed} asked for user input, which the gateway cannot give"
                ),
                Some("call_error"),
            ),
            Ok(Err(e)) => {
                // Over HTTP a dead server does not close the transport: a failed send is the
                // signal to reconnect.
                if peer.is_transport_closed()
                    || matches!(
                        e,
                        rmcp::ServiceError::TransportSend(_) | rmcp::ServiceError::TransportClosed
                    )
                {
                    slot.broken.notify_one();
                }
                (
                    format!(
                        "Error: calling tool {exposed} failed: {}",
                        slot.redact(&e.to_string())
                    ),
                    Some("call_error"),
                )
            }
        }
    }

    /// `GET /v1/mcp/tools` body.
    pub fn tools_listing(&self) -> Value {
        let catalog = self.catalog();
        let data: Vec<Value> = catalog
            .all()
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "original_name": t.original,
                    "description": t.description,
                    "server": self.servers[t.server].name,
                    "input_schema": t.input_schema,
                    "healthy": t.healthy,
                })
            })
            .collect();
        let servers: Vec<Value> = self
            .servers
            .iter()
            .map(|s| {
                let st = s.state.read().expect("server lock");
                json!({
                    "name": s.name,
                    "transport": if s.cfg.url.is_some() { "streamable_http" } else { "stdio" },
                    "url": s.cfg.url.as_deref().map(redact_url),
                    "healthy": st.healthy,
                    "tools": st.tools.len(),
                    "connected_at": st.connected_at.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs()),
                    "last_error": st.last_error,
                })
            })
            .collect();
        json!({"object": "list", "data": data, "servers": servers})
    }
}

impl ServerSlot {
    /// `text` with the server's URL (which may hold credentials in its user info, path or query)
    /// replaced by its origin: for logs, `last_error` and tool messages.
    pub fn redact(&self, text: &str) -> String {
        match &self.cfg.url {
            Some(u) => text.replace(u.as_str(), &redact_url(u)),
            None => text.to_string(),
        }
    }
}

/// `scheme://host[:port]` of a URL: no user info, path or query.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or(authority);
    format!("{scheme}://{host}")
}

/// A tool result as the text of a `tool` message. `isError` results are marked so the model
/// knows the call failed (and the failure is counted).
fn render(result: &CallToolResult) -> (String, Option<&'static str>) {
    let mut parts: Vec<String> = Vec::with_capacity(result.content.len());
    for block in &result.content {
        if let ContentBlock::Text(t) = block {
            parts.push(t.text.clone());
            continue;
        }
        // Other blocks as a short description (the model cannot use raw base64 anyway).
        let v = serde_json::to_value(block).unwrap_or_default();
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("content");
        let text = v
            .pointer("/resource/text")
            .and_then(Value::as_str)
            .map(str::to_string);
        parts.push(match text {
            Some(t) => t,
            None => {
                let what = v
                    .get("mimeType")
                    .or_else(|| v.get("uri"))
                    .or_else(|| v.pointer("/resource/uri"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                format!("[{kind} {what}]")
            }
        });
    }
    let mut text = parts.join("\n");
    if text.is_empty() {
        if let Some(s) = &result.structured_content {
            text = s.to_string();
        }
    }
    if result.is_error == Some(true) {
        (format!("Error: {text}"), Some("tool_error"))
    } else {
        (text, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_before_its_route_is_delivered_in_order() {
        let p = |n: f64| {
            rmcp::model::ProgressNotificationParam::new(
                rmcp::model::ProgressToken(rmcp::model::NumberOrString::Number(7)),
                n,
            )
        };
        let mut t = ProgressTable::default();
        t.deliver("7".into(), p(1.0));
        t.deliver("8".into(), p(9.0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        t.route("7".into(), tx);
        t.deliver("7".into(), p(2.0));
        assert_eq!(rx.try_recv().unwrap().progress, 1.0);
        assert_eq!(rx.try_recv().unwrap().progress, 2.0);
        assert!(rx.try_recv().is_err());
        assert_eq!(t.early.len(), 1, "another call's progress still waits");
        for i in 0..1000 {
            t.deliver(format!("x{i}"), p(0.0));
        }
        assert!(t.early.len() <= ProgressTable::EARLY_MAX, "bounded");
    }

    #[test]
    fn urls_lose_credentials() {
        assert_eq!(
            redact_url("https://user:pw@mcp.example.com:8443/k/SECRET/mcp?key=x"),
            "https://mcp.example.com:8443"
        );
        assert_eq!(redact_url("http://127.0.0.1:9/mcp"), "http://127.0.0.1:9");
    }
}
