//! The gateway's own MCP tools (`gateway_chat`, `gateway_list_models`) call the gateway as the
//! caller: over loopback HTTP to its own listener, with the caller's credentials, so its keys,
//! model lists, limits, metrics and logs all apply exactly as to any request. The calls carry
//! `X-MCP-Bypass` and `X-A2A-Bypass` (a model called from a tool never runs tools itself:
//! nothing recurses).

use http::Method;
use serde_json::Value;

pub struct Loopback {
    client: Option<reqwest13::Client>,
    base: String,
}

/// Longest answer read back (a chat answer, a model list).
const MAX_ANSWER: usize = 8 * 1024 * 1024;

impl Loopback {
    pub fn new(cfg: &crate::config::Config) -> Loopback {
        let tls = cfg.server.tls_cert_path.is_some();
        let host = match cfg.server.host.as_str() {
            "0.0.0.0" | "localhost" | "" => "127.0.0.1".to_string(),
            "::" => "[::1]".to_string(),
            h if h.contains(':') => format!("[{h}]"),
            h => h.to_string(),
        };
        let base = format!(
            "{}://{host}:{}",
            if tls { "https" } else { "http" },
            cfg.server.port
        );
        // Its own listener: the certificate names the public host, not the loopback address
        // this connects to (nothing else can answer on it).
        let client = reqwest13::Client::builder()
            .danger_accept_invalid_certs(tls)
            .no_proxy()
            .timeout(
                cfg.client
                    .total_timeout
                    .map_or(std::time::Duration::from_secs(600), |t| t.get()),
            )
            .build()
            .ok();
        Loopback { client, base }
    }

    /// One call; the status and the JSON answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        credentials: &[(http::HeaderName, http::HeaderValue)],
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let client = self
            .client
            .as_ref()
            .ok_or("the loopback client could not be built")?;
        let mut req = client
            .request(method, format!("{}{path}", self.base))
            .header("x-mcp-bypass", "true")
            .header("x-a2a-bypass", "true");
        for (k, v) in credentials {
            req = req.header(k, v);
        }
        if let Some(b) = body {
            req = req
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(b).map_err(|e| e.to_string())?);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("calling the gateway failed: {e}"))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("reading the gateway's answer failed: {e}"))?;
        if bytes.len() > MAX_ANSWER {
            return Err("the gateway's answer is too large for a tool result".into());
        }
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, v))
    }
}
