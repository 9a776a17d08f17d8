//! `[mcp]`: the MCP servers whose tools the gateway runs for the model (see README "MCP").

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, HumanDuration, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    /// Inject MCP tools into chat requests and run the tool loop (`MCP_ENABLE`).
    pub enable: bool,
    /// Serve `GET /v1/mcp/tools` (`MCP_EXPOSE`); 403 otherwise.
    pub expose: bool,
    /// Servers, in priority order: on a tool-name clash the earlier server keeps the plain name.
    pub servers: Vec<McpServerConfig>,
    /// Timeout of the initialize handshake and of `tools/list` (`MCP_CLIENT_TIMEOUT`).
    pub client_timeout: HumanDuration,
    /// Default timeout of one `tools/call` (`MCP_REQUEST_TIMEOUT`); per server `timeout` wins.
    pub request_timeout: HumanDuration,
    /// Connection attempts after the first failure before waiting `reconnect_interval`
    /// (`MCP_MAX_RETRIES`).
    pub max_retries: u32,
    /// First wait between connection attempts, doubled each time (`MCP_INITIAL_BACKOFF`).
    pub initial_backoff: HumanDuration,
    /// Upper bound of the doubling backoff (`MCP_RETRY_INTERVAL`).
    pub retry_interval: HumanDuration,
    /// Keep reconnecting after `max_retries` failed (`MCP_ENABLE_RECONNECT`).
    pub enable_reconnect: bool,
    /// Wait between reconnection rounds once `max_retries` are used up (`MCP_RECONNECT_INTERVAL`).
    pub reconnect_interval: HumanDuration,
    /// Re-list tools of connected servers periodically, which also detects dead servers
    /// (`MCP_POLLING_ENABLE`).
    pub polling_enable: bool,
    /// (`MCP_POLLING_INTERVAL`).
    pub polling_interval: HumanDuration,
    /// Most model calls per client request (`MCP_MAX_ITERATIONS`).
    pub max_iterations: u32,
    /// Only these tools (names as the server gives them), for every server (`MCP_INCLUDE_TOOLS`).
    pub include_tools: Vec<String>,
    /// Never these tools, for every server (`MCP_EXCLUDE_TOOLS`).
    pub exclude_tools: Vec<String>,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            enable: false,
            expose: false,
            servers: Vec::new(),
            client_timeout: HumanDuration::secs(5),
            request_timeout: HumanDuration::secs(5),
            max_retries: 3,
            initial_backoff: HumanDuration::secs(1),
            retry_interval: HumanDuration::secs(5),
            enable_reconnect: true,
            reconnect_interval: HumanDuration::secs(30),
            polling_enable: true,
            polling_interval: HumanDuration::secs(30),
            max_iterations: 10,
            include_tools: Vec::new(),
            exclude_tools: Vec::new(),
        }
    }
}

/// One MCP server: `url` (streamable HTTP) or `command` (stdio child process).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpServerConfig {
    /// Shown in `/v1/mcp/tools`, logs and metrics; default: the URL's host:port or the command.
    pub name: Option<String>,
    pub url: Option<String>,
    /// Sent as `Authorization: Bearer <token>`.
    pub bearer_token: Option<Secret>,
    pub headers: BTreeMap<String, Secret>,
    /// `tools/call` timeout for this server (default `request_timeout`).
    pub timeout: Option<HumanDuration>,
    pub include_tools: Vec<String>,
    pub exclude_tools: Vec<String>,
    /// Program of a stdio server (started as a child process, restarted on reconnect).
    pub command: Option<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, Secret>,
    pub cwd: Option<PathBuf>,
}

impl McpServerConfig {
    pub fn from_url(url: &str) -> Self {
        McpServerConfig {
            url: Some(url.to_string()),
            ..Default::default()
        }
    }

    /// The display name: configured, else derived from the URL or command.
    pub fn display_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        if let Some(u) = &self.url {
            // host[:port], without user info (which may hold credentials).
            let rest = u.split_once("://").map_or(u.as_str(), |(_, r)| r);
            let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
            return authority
                .rsplit('@')
                .next()
                .unwrap_or(authority)
                .to_string();
        }
        self.command
            .as_deref()
            .map(|c| c.rsplit('/').next().unwrap_or(c).to_string())
            .unwrap_or_default()
    }
}

impl McpConfig {
    /// Names servers that have none: the derived name, with `-2`, `-3`... when two servers share
    /// a host (several `MCP_SERVERS` URLs on one host must not stop the gateway).
    pub(super) fn assign_default_names(&mut self) {
        let explicit: std::collections::HashSet<String> =
            self.servers.iter().filter_map(|s| s.name.clone()).collect();
        let mut taken = explicit.clone();
        for s in self.servers.iter_mut().filter(|s| s.name.is_none()) {
            let base = s.display_name();
            let mut name = base.clone();
            let mut n = 2;
            while taken.contains(&name) {
                name = format!("{base}-{n}");
                n += 1;
            }
            taken.insert(name.clone());
            s.name = Some(name);
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            let key = format!("mcp.servers[{i}]");
            match (&s.url, &s.command) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError(format!(
                        "{key}: set either url (streamable HTTP) or command (stdio), not both"
                    )))
                }
                (None, None) => {
                    return Err(ConfigError(format!(
                        "{key}: needs url (streamable HTTP) or command (stdio)"
                    )))
                }
                (Some(u), None) => {
                    let ok = (u.starts_with("http://") || u.starts_with("https://"))
                        && u.parse::<http::Uri>().is_ok_and(|x| x.host().is_some());
                    if !ok {
                        return Err(ConfigError(format!(
                            "{key}.url (MCP_SERVERS): {u:?} is not an http(s) URL"
                        )));
                    }
                }
                (None, Some(c)) if c.trim().is_empty() => {
                    return Err(ConfigError(format!("{key}.command: empty")))
                }
                _ => {}
            }
            for (h, v) in &s.headers {
                if http::HeaderName::try_from(h.as_str()).is_err()
                    || http::HeaderValue::try_from(v.expose()).is_err()
                {
                    return Err(ConfigError(format!("{key}.headers.{h}: invalid header")));
                }
            }
            if s.timeout.is_some_and(|t| t.get().is_zero()) {
                return Err(ConfigError(format!(
                    "{key}.timeout: must be greater than 0"
                )));
            }
            let name = s.display_name();
            if !names.insert(name.clone()) {
                return Err(ConfigError(format!(
                    "{key}: two MCP servers are named {name:?}; give one a distinct name"
                )));
            }
        }
        for (key, d) in [
            (
                "mcp.client_timeout (MCP_CLIENT_TIMEOUT)",
                self.client_timeout,
            ),
            (
                "mcp.request_timeout (MCP_REQUEST_TIMEOUT)",
                self.request_timeout,
            ),
            (
                "mcp.initial_backoff (MCP_INITIAL_BACKOFF)",
                self.initial_backoff,
            ),
            (
                "mcp.retry_interval (MCP_RETRY_INTERVAL)",
                self.retry_interval,
            ),
            (
                "mcp.reconnect_interval (MCP_RECONNECT_INTERVAL)",
                self.reconnect_interval,
            ),
            (
                "mcp.polling_interval (MCP_POLLING_INTERVAL)",
                self.polling_interval,
            ),
        ] {
            if d.get().is_zero() {
                return Err(ConfigError(format!("{key}: must be greater than 0")));
            }
        }
        if self.max_iterations == 0 {
            return Err(ConfigError(
                "mcp.max_iterations (MCP_MAX_ITERATIONS): must be at least 1".into(),
            ));
        }
        Ok(())
    }
}
