//! The tests' MCP server over stdio (the gateway starts it as a child process in
//! `tests/mcp.rs`); also handy by hand: `MCP` servers in `conf/` examples can point at it.

#[path = "../tests/mcp_support/mod.rs"]
mod mcp_support;

use std::sync::Arc;

use rmcp::ServiceExt;

#[tokio::main]
async fn main() {
    let (tx, _) = tokio::sync::broadcast::channel(16);
    let server = mcp_support::McpTestServer::new(Arc::new(Default::default()), tx);
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .expect("MCP handshake on stdio");
    // Ends when the gateway closes stdin.
    let _ = running.waiting().await;
}
