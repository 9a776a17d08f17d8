//! Keeps every MCP server connected, as a Pingora background service (its own runtime, started
//! after the listeners, so the gateway serves while servers are down or slow).
//!
//! Per server: connect (initialize) and list tools (all pages) within `client_timeout`; on
//! failure retry with a doubling backoff from `initial_backoff` (capped at `retry_interval`) for
//! `max_retries` attempts, then every `reconnect_interval` (if `enable_reconnect`). While
//! connected, tools are re-listed on `notifications/tools/list_changed` and every
//! `polling_interval`; a failed re-list, a closed transport or a call that found the transport
//! closed marks the server down (its tools leave the requests) and starts reconnecting.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use log::{info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation, ProtocolVersion};
use rmcp::service::{NotificationContext, RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, ServiceExt};
use tokio::sync::Notify;

use super::McpHub;

/// The gateway's MCP client identity and notification handling.
struct Handler {
    tools_changed: Arc<Notify>,
    progress: super::ProgressRoutes,
}

impl ClientHandler for Handler {
    fn get_info(&self) -> ClientConfig {
        // The initialize handshake's newest version: tools/list_changed then arrives as a
        // plain notification (the 2026 protocol would need a subscription per connection).
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("inference-gateway", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.tools_changed.notify_one();
    }

    async fn on_progress(
        &self,
        params: rmcp::model::ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        // Progress of a call made for an `/mcp` client: passed on to it.
        let token = match &params.progress_token.0 {
            rmcp::model::NumberOrString::String(s) => s.to_string(),
            rmcp::model::NumberOrString::Number(n) => n.to_string(),
        };
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .deliver(token, params);
    }
}

pub struct McpService {
    pub hub: Arc<McpHub>,
}

#[async_trait]
impl BackgroundService for McpService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let tasks: Vec<_> = (0..self.hub.servers.len())
            .map(|i| tokio::spawn(maintain(self.hub.clone(), i)))
            .collect();
        let _ = shutdown.changed().await;
        for t in tasks {
            // Dropping a connection task drops its service, which closes the session (and
            // ends a stdio child).
            t.abort();
        }
    }
}

/// The wait before attempt `failures + 1`, or `None` to give up.
pub fn backoff(cfg: &crate::config::McpConfig, failures: u32) -> Option<Duration> {
    if failures <= cfg.max_retries {
        let base = cfg.initial_backoff.get();
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        let wait = base.checked_mul(factor).unwrap_or(Duration::MAX);
        Some(wait.min(cfg.retry_interval.get().max(base)))
    } else if cfg.enable_reconnect {
        Some(cfg.reconnect_interval.get())
    } else {
        None
    }
}

async fn maintain(hub: Arc<McpHub>, slot: usize) {
    let cfg = &hub.cfg;
    let server = hub.servers[slot].clone();
    let mut failures: u32 = 0;
    loop {
        let tools_changed = Arc::new(Notify::new());
        match connect(&hub, slot, tools_changed.clone()).await {
            Ok(running) => {
                failures = 0;
                let (reason, mut running) = watch(&hub, slot, running, &tools_changed).await;
                // Down first: no call may pick the closing connection.
                hub.set_down(slot, reason.clone());
                let reason = server.redact(&reason);
                warn!("MCP server {}: {reason}; reconnecting", server.name);
                let _ = tokio::time::timeout(Duration::from_secs(2), running.close()).await;
            }
            Err(e) => {
                failures += 1;
                let shown = server.redact(&e);
                warn!("MCP server {}: {shown} (attempt {failures})", server.name);
                hub.set_down(slot, e);
            }
        }
        let Some(wait) = backoff(cfg, failures.max(1)) else {
            warn!(
                "MCP server {}: giving up after {} attempts (MCP_ENABLE_RECONNECT is off)",
                server.name, failures
            );
            return;
        };
        tokio::time::sleep(wait).await;
    }
}

type Running = RunningService<RoleClient, Handler>;

async fn connect(hub: &McpHub, slot: usize, tools_changed: Arc<Notify>) -> Result<Running, String> {
    let s = &hub.servers[slot];
    let handler = Handler {
        tools_changed,
        progress: hub.progress.clone(),
    };
    let timeout = hub.cfg.client_timeout.get();
    let running = if let Some(url) = &s.cfg.url {
        let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
        if let Some(t) = &s.cfg.bearer_token {
            config = config.auth_header(t.expose());
        }
        let mut headers = std::collections::HashMap::new();
        for (k, v) in &s.cfg.headers {
            // Validated at start.
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::try_from(k.as_str()),
                http::HeaderValue::try_from(v.expose()),
            ) {
                headers.insert(k, v);
            }
        }
        config = config.custom_headers(headers);
        let transport = StreamableHttpClientTransport::from_config(config);
        tokio::time::timeout(timeout, handler.serve(transport))
            .await
            .map_err(|_| format!("no answer to initialize within {} ms", timeout.as_millis()))?
            .map_err(|e| format!("initialize failed: {e}"))?
    } else {
        let program = s.cfg.command.as_deref().unwrap_or_default();
        let mut cmd = tokio::process::Command::new(program);
        // The child gets a minimal environment plus its configured `env`: never the gateway's
        // provider keys, Redis URL or OIDC secret.
        cmd.env_clear();
        for k in ["PATH", "HOME", "LANG", "TMPDIR", "USER"] {
            if let Ok(v) = std::env::var(k) {
                cmd.env(k, v);
            }
        }
        cmd.args(&s.cfg.args);
        for (k, v) in &s.cfg.env {
            cmd.env(k, v.expose());
        }
        if let Some(d) = &s.cfg.cwd {
            cmd.current_dir(d);
        }
        cmd.kill_on_drop(true);
        let (transport, stderr) = TokioChildProcess::builder(cmd)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {program:?}: {e}"))?;
        if let Some(stderr) = stderr {
            // The child's stderr goes to the gateway's log, one line per record (never raw
            // into a JSON log stream).
            let name = s.name.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    info!(target: "mcp", "MCP server {name} (stderr): {line}");
                }
            });
        }
        tokio::time::timeout(timeout, handler.serve(transport))
            .await
            .map_err(|_| format!("no answer to initialize within {} ms", timeout.as_millis()))?
            .map_err(|e| format!("initialize failed: {e}"))?
    };
    // Always ask the server: a cached list would hide removed tools and dead servers.
    running
        .peer()
        .set_response_cache_config(rmcp::service::ClientCacheConfig::disabled())
        .await;
    let tools = list_tools(hub, &running).await?;
    info!("MCP server {} connected: {} tools", s.name, tools.len());
    hub.set_connected(slot, running.peer().clone(), tools);
    Ok(running)
}

async fn list_tools(hub: &McpHub, running: &Running) -> Result<Vec<rmcp::model::Tool>, String> {
    let timeout = hub.cfg.client_timeout.get();
    tokio::time::timeout(timeout, running.peer().list_all_tools())
        .await
        .map_err(|_| format!("tools/list timed out after {} ms", timeout.as_millis()))?
        .map_err(|e| format!("tools/list failed: {e}"))
}

/// Serves a live connection until it breaks; returns why, and the connection to close.
async fn watch(
    hub: &McpHub,
    slot: usize,
    running: Running,
    tools_changed: &Notify,
) -> (String, Running) {
    let s = &hub.servers[slot];
    let polling = hub.cfg.polling_enable;
    let mut poll = tokio::time::interval(hub.cfg.polling_interval.get());
    poll.reset();
    // The transport's own end (stdio child exited, session closed) is checked often; it costs
    // a flag read.
    let mut liveness = tokio::time::interval(Duration::from_millis(500));
    let reason = loop {
        tokio::select! {
            _ = tools_changed.notified() => {
                match list_tools(hub, &running).await {
                    Ok(tools) => {
                        info!("MCP server {}: tool list changed ({} tools)", s.name, tools.len());
                        hub.set_connected(slot, running.peer().clone(), tools);
                    }
                    Err(e) => break e,
                }
            }
            _ = poll.tick(), if polling => {
                match list_tools(hub, &running).await {
                    Ok(tools) => hub.set_connected(slot, running.peer().clone(), tools),
                    Err(e) => break e,
                }
            }
            _ = s.broken.notified() => {
                // A call failed on a transport error. The signal may be stale (a call on an
                // earlier connection, or a second failed call): probe before reconnecting.
                match list_tools(hub, &running).await {
                    Ok(tools) => hub.set_connected(slot, running.peer().clone(), tools),
                    Err(e) => break format!("a tool call failed and the server does not answer: {e}"),
                }
            }
            _ = liveness.tick() => {
                if running.is_closed() || running.peer().is_transport_closed() {
                    break "connection closed".to_string();
                }
            }
        }
    };
    (reason, running)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HumanDuration, McpConfig};

    #[test]
    fn backoff_doubles_then_uses_the_reconnect_interval() {
        let cfg = McpConfig {
            max_retries: 3,
            initial_backoff: HumanDuration(Duration::from_millis(100)),
            retry_interval: HumanDuration(Duration::from_millis(300)),
            reconnect_interval: HumanDuration(Duration::from_secs(30)),
            ..Default::default()
        };
        assert_eq!(backoff(&cfg, 1), Some(Duration::from_millis(100)));
        assert_eq!(backoff(&cfg, 2), Some(Duration::from_millis(200)));
        assert_eq!(backoff(&cfg, 3), Some(Duration::from_millis(300)));
        assert_eq!(backoff(&cfg, 4), Some(Duration::from_secs(30)));
        let off = McpConfig {
            enable_reconnect: false,
            ..cfg
        };
        assert_eq!(backoff(&off, 4), None);
    }
}
