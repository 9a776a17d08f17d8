//! A real rmcp MCP server for the tests: tools `add`, `echo`, `sleep`, `fail`, `slow_echo`, and a
//! `late` tool hidden until [`McpTestServer::reveal_late_tool`] (which also sends
//! `notifications/tools/list_changed`). `tools/list` is paginated, two tools a page, so the
//! gateway's pagination is exercised on every connection.
//!
//! Served over streamable HTTP on 127.0.0.1 (tests) or stdio (`examples/mcp_stdio_server.rs`).
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{tool, tool_handler, tool_router, ErrorData as McpError, RoleServer, ServerHandler};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

#[derive(Deserialize, rmcp::schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct AddArgs {
    /// First addend
    pub a: i64,
    /// Second addend
    pub b: i64,
}

#[derive(Deserialize, rmcp::schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct EchoArgs {
    pub text: String,
}

#[derive(Deserialize, rmcp::schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct SleepArgs {
    pub ms: u64,
}

#[derive(Deserialize, rmcp::schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct CountArgs {
    /// How many steps (one progress notification each)
    pub n: u32,
}

/// What the tests observe of the server.
#[derive(Default)]
pub struct Observed {
    pub calls: AtomicUsize,
    /// `sleep` calls that ended by cancellation (the client's `notifications/cancelled`).
    pub cancelled: AtomicUsize,
    /// `sleep` calls running now, and the most ever at once.
    pub running: AtomicUsize,
    pub max_running: AtomicUsize,
    pub late_visible: AtomicBool,
}

#[derive(Clone)]
pub struct McpTestServer {
    tool_router: ToolRouter<Self>,
    pub observed: Arc<Observed>,
    changed: tokio::sync::broadcast::Sender<()>,
}

#[tool_router]
impl McpTestServer {
    pub fn new(observed: Arc<Observed>, changed: tokio::sync::broadcast::Sender<()>) -> Self {
        Self {
            tool_router: Self::tool_router(),
            observed,
            changed,
        }
    }

    #[tool(description = "Add two integers")]
    async fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        self.observed.calls.fetch_add(1, Ordering::SeqCst);
        (a + b).to_string()
    }

    #[tool(description = "Echo the text back")]
    async fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        self.observed.calls.fetch_add(1, Ordering::SeqCst);
        // Test hook: `env:NAME` answers with this process's variable, to show what a stdio
        // server inherits from the gateway.
        if let Some(name) = text.strip_prefix("env:") {
            return std::env::var(name).unwrap_or_else(|_| "unset".into());
        }
        text
    }

    #[tool(description = "Sleep for ms milliseconds")]
    async fn sleep(
        &self,
        Parameters(SleepArgs { ms }): Parameters<SleepArgs>,
        ct: CancellationToken,
    ) -> Result<String, String> {
        let o = &self.observed;
        o.calls.fetch_add(1, Ordering::SeqCst);
        let now = o.running.fetch_add(1, Ordering::SeqCst) + 1;
        o.max_running.fetch_max(now, Ordering::SeqCst);
        let r = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(format!("slept {ms} ms")),
            _ = ct.cancelled() => {
                o.cancelled.fetch_add(1, Ordering::SeqCst);
                Err("cancelled".to_string())
            }
        };
        o.running.fetch_sub(1, Ordering::SeqCst);
        r
    }

    #[tool(description = "Counts to n, reporting progress at each step")]
    async fn count(
        &self,
        Parameters(CountArgs { n }): Parameters<CountArgs>,
        meta: rmcp::model::RequestMetaObject,
        peer: rmcp::Peer<RoleServer>,
    ) -> String {
        self.observed.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(token) = meta.get_progress_token() {
            for i in 1..=n {
                let _ = peer
                    .notify_progress(
                        rmcp::model::ProgressNotificationParam::new(token.clone(), f64::from(i))
                            .with_total(f64::from(n))
                            .with_message(format!("step {i}")),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        format!("counted to {n}")
    }

    #[tool(description = "Always fails")]
    async fn fail(&self) -> Result<CallToolResult, McpError> {
        self.observed.calls.fetch_add(1, Ordering::SeqCst);
        Ok(CallToolResult::error(vec![ContentBlock::text("boom")]))
    }

    #[tool(description = "A tool that appears later")]
    async fn late(&self) -> String {
        "late result".to_string()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for McpTestServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("igw-test-server", "0.1.0"))
    }

    async fn on_initialized(&self, cx: NotificationContext<RoleServer>) {
        let (peer, mut rx) = (cx.peer.clone(), self.changed.subscribe());
        tokio::spawn(async move {
            while rx.recv().await.is_ok() {
                if peer.notify_tool_list_changed().await.is_err() {
                    break;
                }
            }
        });
    }

    /// Two tools a page; `late` only once revealed.
    async fn list_tools(
        &self,
        req: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let visible = self.observed.late_visible.load(Ordering::SeqCst);
        let mut all = self.tool_router.list_all();
        all.retain(|t| visible || t.name != "late");
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let start: usize = req
            .and_then(|p| p.cursor)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let mut page =
            ListToolsResult::with_all_items(all.iter().skip(start).take(2).cloned().collect());
        if start + 2 < all.len() {
            page.next_cursor = Some((start + 2).to_string());
        }
        Ok(page)
    }
}

impl McpTestServer {
    /// Shows the `late` tool and tells connected clients.
    pub fn reveal_late_tool(&self) {
        self.observed.late_visible.store(true, Ordering::SeqCst);
        let _ = self.changed.send(());
    }
}

/// A running streamable-HTTP server; stopped on drop.
pub struct HttpMcpServer {
    pub url: String,
    pub server: McpTestServer,
    pub observed: Arc<Observed>,
    stop: CancellationToken,
}

impl HttpMcpServer {
    /// Serves on 127.0.0.1:`port` (0 = any free port), at path `/mcp`.
    pub async fn start(port: u16) -> HttpMcpServer {
        use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
        use rmcp::transport::streamable_http_server::{
            StreamableHttpServerConfig, StreamableHttpService,
        };
        let observed = Arc::new(Observed::default());
        let (tx, _) = tokio::sync::broadcast::channel(16);
        let server = McpTestServer::new(observed.clone(), tx);
        let stop = CancellationToken::new();
        let factory = server.clone();
        let service = StreamableHttpService::new(
            move || Ok(factory.clone()),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default().with_cancellation_token(stop.child_token()),
        );
        let router = axum::Router::new().nest_service("/mcp", service);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind MCP server");
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { s.cancelled_owned().await })
                .await;
        });
        HttpMcpServer {
            url,
            server,
            observed,
            stop,
        }
    }
}

impl Drop for HttpMcpServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
