//! Configuration: one internal type, filled from built-in defaults, then the TOML file, then the
//! environment (the Go gateway's variable names), then validated once at start.
//!
//! Parsing is strict: an unknown TOML key or an invalid value stops the process with a message
//! that names the key, so a typo never silently falls back to a default.

pub mod a2a;
pub mod auth;
pub mod cache;
mod duration;
mod env;
pub mod guardrails;
pub mod mcp;
pub mod models;
pub mod otel;
pub mod providers;
pub mod resilience;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use duration::HumanDuration;
pub use mcp::{McpConfig, McpServerConfig};
pub use models::{ModelEntry, ModelTable, ModelsConfig};
pub use providers::{AuthStyle, ProviderConfig};

/// A secret (API key). Never printed: `Debug` and `Display` redact it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `production` or `development` (development logs at debug level).
    pub environment: Environment,
    pub server: ServerConfig,
    pub client: ClientConfig,
    pub models: ModelsConfig,
    /// Built-in providers (by id) and custom providers (any other name).
    pub providers: BTreeMap<String, ProviderConfig>,
    /// `alias -> provider/model` with optional default parameters and system prompt prefix.
    pub aliases: BTreeMap<String, AliasConfig>,
    pub telemetry: TelemetryConfig,
    pub log: LogConfig,
    /// MCP servers and the server-side tool loop.
    pub mcp: McpConfig,
    /// A2A agents whose skills become tools.
    pub a2a: a2a::A2aConfig,
    /// The response cache.
    pub cache: cache::CacheConfig,
    /// Input and output checks.
    pub guardrails: guardrails::GuardrailsConfig,
    /// OpenTelemetry traces (the standard `OTEL_*` variables).
    pub otel: otel::OtelConfig,
    /// Retries within a provider's pool (providers may override). Unset: two tries for pools
    /// of two or more backends, one for a single backend.
    pub retry: Option<resilience::RetryConfig>,
    /// Who may call: OIDC and the switch that requires credentials.
    pub auth: auth::AuthConfig,
    /// Virtual API keys.
    pub keys: Vec<auth::KeyConfig>,
    /// Where rate limits and spend live (memory or Redis).
    pub limits: auth::LimitsConfig,
    /// USD per million tokens by `provider/model`: the older form of `[models."..."]` prices,
    /// still accepted (over the model table).
    pub prices: BTreeMap<String, auth::Price>,
    /// The model table (conf/models.toml under `[models."..."]` and `[prices]`), built at load.
    #[serde(skip)]
    pub model_table: ModelTable,
    /// The reasoning-state vault (Anthropic thinking, Gemini thought signatures).
    pub reasoning: ReasoningConfig,
    /// The client APIs besides Chat Completions (`/v1/messages`).
    pub doors: DoorsConfig,
    /// Stored responses of the Responses door (`/v1/responses`).
    pub responses: ResponsesConfig,
    /// The control plane's store (`DATABASE_URL`).
    pub store: StoreConfig,
    /// The admin API (`/admin/v1`).
    pub admin: AdminConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://path` (one node; relative to the working directory) or `postgres://...`
    /// (several replicas) (`DATABASE_URL`). Unset: keys, aliases and spend live in the
    /// configuration and in memory, as without a control plane.
    pub database_url: Option<Secret>,
    /// How long the request log (`/admin/v1/requests`) keeps a request
    /// (`STORE_REQUEST_LOG_RETENTION`, default 7 days; `0s` keeps no request log).
    pub request_log_retention: HumanDuration,
    /// The request log keeps request and response bodies too (`STORE_LOG_BODIES`, default
    /// off; at most 64 KiB of each).
    pub log_bodies: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            database_url: None,
            request_log_retention: HumanDuration::secs(7 * 24 * 3600),
            log_bodies: false,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The admin API's credential (`ADMIN_API_KEY`), sent as `X-Admin-Key` or
    /// `Authorization: Bearer`. Unset: `/admin/v1` does not exist.
    pub api_key: Option<Secret>,
    /// File holding it (`ADMIN_API_KEY_FILE`); trailing whitespace is ignored.
    pub api_key_file: Option<std::path::PathBuf>,
    /// `claim=value` (`ADMIN_OIDC_CLAIM`, e.g. `groups=igw-admins`): an OIDC token of
    /// `auth.oidc_issuer` whose claim is (or, for a list, contains) the value is an admin
    /// credential too.
    pub oidc_claim: Option<String>,
}

impl AdminConfig {
    /// The admin credential, when one is configured.
    pub fn key(&self) -> Option<&str> {
        self.api_key
            .as_ref()
            .map(|k| k.expose())
            .filter(|k| !k.is_empty())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponsesConfig {
    /// Responses kept in memory, oldest dropped first (`RESPONSES_MAX_ENTRIES`); 0 keeps none
    /// (`store: true` then answers without keeping anything).
    pub max_entries: usize,
    /// Bytes of stored responses kept in memory, oldest dropped first (`RESPONSES_MAX_BYTES`).
    pub max_bytes: usize,
    /// How long a stored response lives, in memory and in Redis (`RESPONSES_TTL`).
    pub ttl: HumanDuration,
    /// Key sealing reasoning state into `encrypted_content` (`RESPONSES_ENCRYPTION_KEY`): 32
    /// bytes as 64 hex digits or base64. Unset: a random key per process (sealed items do
    /// not survive a restart or move between replicas).
    pub encryption_key: Option<Secret>,
}

impl Default for ResponsesConfig {
    fn default() -> Self {
        ResponsesConfig {
            max_entries: 10_000,
            max_bytes: 256 << 20,
            ttl: HumanDuration::secs(24 * 3600),
            encryption_key: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DoorsConfig {
    pub messages: MessagesDoorConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessagesDoorConfig {
    /// Provider of bare model names on `/v1/messages` (Claude Code sends `claude-...`), unless
    /// the name is an alias or has a `provider/` prefix (`DOORS_MESSAGES_DEFAULT_PROVIDER`).
    pub default_provider: String,
}

impl Default for MessagesDoorConfig {
    fn default() -> Self {
        MessagesDoorConfig {
            default_provider: "anthropic".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReasoningConfig {
    /// How long a turn's reasoning state is kept for its next turn (`REASONING_VAULT_TTL`).
    pub vault_ttl: HumanDuration,
    /// Bytes of reasoning state kept in memory, oldest dropped first; 0 turns the vault off
    /// (`REASONING_VAULT_MAX_BYTES`).
    pub vault_max_bytes: usize,
}

impl Default for ReasoningConfig {
    fn default() -> Self {
        ReasoningConfig {
            vault_ttl: HumanDuration::secs(3600),
            vault_max_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Serve Prometheus metrics (`TELEMETRY_ENABLE`).
    pub enable: bool,
    /// Port of the metrics listener (`TELEMETRY_METRICS_PORT`); path `/metrics`.
    pub metrics_port: u16,
    /// Address of the metrics listener (`TELEMETRY_METRICS_HOST`); default: `server.host`.
    pub metrics_host: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            enable: false,
            metrics_port: 9464,
            metrics_host: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace` (`LOG_LEVEL`); default info (debug in
    /// development). `RUST_LOG` overrides it with per-module filters.
    pub level: Option<String>,
    /// `json` or `text` (`LOG_FORMAT`); default json in production, text in development.
    pub format: Option<LogFormat>,
    /// Append logs to this file instead of stderr (`LOG_FILE`).
    pub file: Option<PathBuf>,
}

impl Config {
    pub fn log_format(&self) -> LogFormat {
        self.log.format.unwrap_or(match self.environment {
            Environment::Production => LogFormat::Json,
            Environment::Development => LogFormat::Text,
        })
    }

    /// Keys can come from the admin API: a store and an admin credential.
    pub fn control_plane(&self) -> bool {
        self.store.database_url.is_some() && self.admin_api()
    }

    /// Whether the admin API exists: an admin key, or an OIDC admin claim.
    pub fn admin_api(&self) -> bool {
        self.admin.key().is_some()
            || (self.admin.oidc_claim.is_some() && self.auth.oidc_issuer.is_some())
    }

    /// Whether callers must authenticate (keys, OIDC or `auth.enable`).
    pub fn auth_configured(&self) -> bool {
        !self.keys.is_empty() || self.auth.enable || self.auth.oidc_issuer.is_some()
    }

    /// Who may see `/health?verbose` (the default follows authentication).
    pub fn health_verbose(&self) -> HealthVerbose {
        self.server
            .health_verbose
            .unwrap_or(if self.auth_configured() {
                HealthVerbose::Auth
            } else {
                HealthVerbose::Public
            })
    }

    pub fn log_level(&self) -> &str {
        self.log.level.as_deref().unwrap_or(match self.environment {
            Environment::Production => "info",
            Environment::Development => "debug",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    #[default]
    Production,
    Development,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Longest wait for the next bytes of a client request (headers or body).
    pub read_timeout: HumanDuration,
    /// Longest wait for one write to the client to make progress (per write, so long streams
    /// are never cut).
    pub write_timeout: HumanDuration,
    /// How long an idle keep-alive client connection is kept.
    pub idle_timeout: HumanDuration,
    /// Largest accepted request body in bytes; larger bodies get 413.
    pub max_request_body_size: usize,
    pub tls_cert_path: Option<PathBuf>,
    pub tls_key_path: Option<PathBuf>,
    /// Worker threads for the proxy service (0 = number of CPUs).
    pub threads: usize,
    /// PID file (absolute path), written in daemon mode and used by systemd.
    pub pid_file: PathBuf,
    /// Unix socket (absolute path) over which a new process (`-u`) takes the listening sockets.
    pub upgrade_sock: PathBuf,
    /// After SIGTERM or an upgrade, in-flight requests may run this long; the process exits as
    /// soon as the last one ends. Long enough for the longest stream you serve.
    pub grace_period: HumanDuration,
    /// After the grace period, time allowed for the runtimes to stop.
    pub graceful_shutdown_timeout: HumanDuration,
    /// Most top-level fields in an API request body (400 `too_many_fields` beyond).
    pub max_json_fields: usize,
    /// Longest time to receive a whole API request body (408 after it); `/proxy` streams
    /// uploads and is bounded by `read_timeout` per read only.
    pub body_timeout: HumanDuration,
    /// Most requests in flight at once (503 `server_busy` beyond); past half of it, answers
    /// close their connection instead of keeping it alive. 0: no cap. Pingora 0.9 has no hook
    /// for the end of a connection, so idle keep-alive connections are bounded by
    /// `idle_timeout`, not counted here.
    pub max_connections: usize,
    /// Who may see `/health?verbose`: `public`, `auth` (a valid key or token) or `off`.
    /// Default: `auth` when keys or OIDC are configured, else `public`.
    pub health_verbose: Option<HealthVerbose>,
    /// The URL clients reach the gateway at (`SERVER_PUBLIC_URL`, e.g.
    /// `https://gateway.example.com`): what `/mcp`'s OAuth metadata names (never taken from
    /// `Host`).
    pub public_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthVerbose {
    Public,
    Auth,
    Off,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8080,
            read_timeout: HumanDuration::secs(30),
            write_timeout: HumanDuration::secs(30),
            idle_timeout: HumanDuration::secs(120),
            max_request_body_size: 10 * 1024 * 1024,
            tls_cert_path: None,
            tls_key_path: None,
            threads: 0,
            pid_file: PathBuf::from("/tmp/inference-gateway.pid"),
            upgrade_sock: PathBuf::from("/tmp/inference-gateway-upgrade.sock"),
            grace_period: HumanDuration::secs(3600),
            graceful_shutdown_timeout: HumanDuration::secs(10),
            max_json_fields: 1024,
            body_timeout: HumanDuration::secs(60),
            max_connections: 10_000,
            health_verbose: None,
            public_url: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// TCP + TLS connect timeout to an upstream.
    pub connect_timeout: HumanDuration,
    /// Time from sending the request to the upstream's response headers (`CLIENT_TIMEOUT`).
    /// Reasoning models may think for minutes before the first byte.
    pub first_byte_timeout: HumanDuration,
    /// Longest silence between two chunks of an upstream response. A stream that keeps
    /// producing is never cut, however long it runs.
    pub stream_idle_timeout: HumanDuration,
    /// Idle upstream connections kept for reuse (`CLIENT_MAX_IDLE_CONNS`).
    pub max_idle_conns: usize,
    /// How long an idle upstream connection is kept (`CLIENT_IDLE_CONN_TIMEOUT`).
    pub idle_conn_timeout: HumanDuration,
    /// Minimum TLS version to upstreams: only `TLS12` (rustls never negotiates below 1.2).
    pub tls_min_version: String,
    /// Timeout for each provider's model list in `GET /v1/models`.
    pub models_timeout: HumanDuration,
    /// How often upstream host names are re-resolved.
    pub dns_refresh_interval: HumanDuration,
    /// Largest non-streaming upstream response body accepted, in bytes.
    pub max_response_body_size: usize,
    /// PEM bundle of CAs trusted for upstream TLS, replacing the system store (for providers
    /// behind an internal CA). Unset: the system store (`SSL_CERT_FILE` honoured).
    pub ca_file: Option<PathBuf>,
    /// Deadline for a whole request, retries and fallbacks included (`CLIENT_TOTAL_TIMEOUT`);
    /// unset: none (streams run as long as they produce).
    pub total_timeout: Option<HumanDuration>,
    /// How long each provider's model list is reused by `GET /v1/models`.
    pub models_cache_ttl: HumanDuration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: HumanDuration::secs(10),
            first_byte_timeout: HumanDuration::secs(600),
            stream_idle_timeout: HumanDuration::secs(300),
            max_idle_conns: 128,
            idle_conn_timeout: HumanDuration::secs(90),
            tls_min_version: "TLS12".into(),
            models_timeout: HumanDuration::secs(5),
            dns_refresh_interval: HumanDuration::secs(30),
            max_response_body_size: 64 * 1024 * 1024,
            ca_file: None,
            total_timeout: None,
            models_cache_ttl: HumanDuration::secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasConfig {
    /// `provider/model` the alias stands for.
    pub target: String,
    /// Parameters added to the request when the client did not set them.
    #[serde(default)]
    pub defaults: serde_json::Map<String, serde_json::Value>,
    /// Text put in front of the system prompt (a system message is added if there is none).
    #[serde(default)]
    pub system_prompt_prefix: Option<String>,
    /// `provider/model`s tried in order when the target's pool fails (before the first byte
    /// reaches the client).
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Timeouts for this alias (over the provider's and `client.*`).
    #[serde(default)]
    pub timeouts: resilience::TimeoutsConfig,
}

/// A configuration error, naming the key or variable at fault.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Default for Config {
    fn default() -> Self {
        Self {
            environment: Environment::Production,
            server: ServerConfig::default(),
            client: ClientConfig::default(),
            models: ModelsConfig::default(),
            providers: BTreeMap::new(),
            aliases: BTreeMap::new(),
            telemetry: TelemetryConfig::default(),
            log: LogConfig::default(),
            mcp: McpConfig::default(),
            a2a: a2a::A2aConfig::default(),
            cache: Default::default(),
            otel: Default::default(),
            guardrails: Default::default(),
            retry: None,
            auth: auth::AuthConfig::default(),
            keys: Vec::new(),
            limits: auth::LimitsConfig::default(),
            prices: BTreeMap::new(),
            model_table: ModelTable::default(),
            reasoning: ReasoningConfig::default(),
            responses: ResponsesConfig::default(),
            store: StoreConfig::default(),
            admin: AdminConfig::default(),
            doors: DoorsConfig::default(),
        }
    }
}

/// The default config file, used when `-c` is not given and it exists.
pub const DEFAULT_PATH: &str = "conf/gateway.toml";

impl Config {
    /// Loads the configuration: `path` (or [`DEFAULT_PATH`] when present), then the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, &|k| std::env::var(k).ok())
    }

    /// As [`load`](Self::load) with an explicit environment (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        getenv: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                ConfigError(format!("cannot read config file {}: {e}", p.display()))
            })?),
            None if Path::new(DEFAULT_PATH).exists() => Some(
                std::fs::read_to_string(DEFAULT_PATH)
                    .map_err(|e| ConfigError(format!("cannot read {DEFAULT_PATH}: {e}")))?,
            ),
            None => None,
        };
        let mut cfg = match text {
            Some(t) => Self::from_toml(&t)?,
            None => Config::default(),
        };
        for p in cfg.providers.values_mut() {
            p.configured = true;
        }
        env::apply(&mut cfg, getenv)?;
        cfg.mcp.assign_default_names();
        // The embedded model table under the configured entries and prices.
        cfg.model_table = ModelTable::build(&models::builtin(), &cfg.models.table, &cfg.prices);
        providers::merge_builtins(&mut cfg.providers)?;
        providers::load_key_files(&mut cfg.providers)?;
        if cfg.admin.key().is_none() {
            if let Some(path) = &cfg.admin.api_key_file {
                let key = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!(
                        "admin.api_key_file (ADMIN_API_KEY_FILE): cannot read {}: {e}",
                        path.display()
                    ))
                })?;
                cfg.admin.api_key = Some(Secret::new(key.trim_end()));
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(format!("invalid configuration: {e}")))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.server.max_json_fields == 0 {
            return Err(ConfigError(
                "server.max_json_fields (SERVER_MAX_JSON_FIELDS) must be > 0".into(),
            ));
        }
        if self.server.health_verbose == Some(HealthVerbose::Auth) && !self.auth_configured() {
            return Err(ConfigError(
                "server.health_verbose (SERVER_HEALTH_VERBOSE) = auth needs keys or OIDC (use public or off)".into(),
            ));
        }
        if self.limits.max_n == 0 {
            return Err(ConfigError(
                "limits.max_n (LIMITS_MAX_N) must be > 0".into(),
            ));
        }
        if self.server.max_request_body_size == 0 {
            return Err(ConfigError(
                "server.max_request_body_size (SERVER_MAX_REQUEST_BODY_SIZE) must be > 0".into(),
            ));
        }
        if self.server.host.parse::<std::net::IpAddr>().is_err() && self.server.host != "localhost"
        {
            return Err(ConfigError(format!(
                "server.host (SERVER_HOST): {:?} is not an IP address",
                self.server.host
            )));
        }
        match (&self.server.tls_cert_path, &self.server.tls_key_path) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError(
                    "server.tls_cert_path and server.tls_key_path must be set together".into(),
                ))
            }
            (Some(c), Some(k)) => {
                for (key, p) in [("server.tls_cert_path", c), ("server.tls_key_path", k)] {
                    if !p.exists() {
                        return Err(ConfigError(format!(
                            "{key}: {} does not exist",
                            p.display()
                        )));
                    }
                }
                // Load them now: a bad certificate must fail `-t` and the start, not panic the
                // listener later (and never after an upgrade took the sockets).
                let loaded = pingora::tls::load_certs_and_key_files(
                    &c.to_string_lossy(),
                    &k.to_string_lossy(),
                );
                if !matches!(loaded, Ok(Some((ref certs, _))) if !certs.is_empty()) {
                    return Err(ConfigError(format!(
                        "server.tls_cert_path/server.tls_key_path: cannot load a certificate and key from {} and {}",
                        c.display(),
                        k.display()
                    )));
                }
            }
            _ => {}
        }
        if !self.client.tls_min_version.eq_ignore_ascii_case("TLS12")
            && self.client.tls_min_version != "1.2"
        {
            return Err(ConfigError(format!(
                "client.tls_min_version (CLIENT_TLS_MIN_VERSION): {:?} is not supported; \
                 only TLS12 (rustls never negotiates below TLS 1.2)",
                self.client.tls_min_version
            )));
        }
        for (key, p) in [
            ("server.pid_file (SERVER_PID_FILE)", &self.server.pid_file),
            (
                "server.upgrade_sock (SERVER_UPGRADE_SOCK)",
                &self.server.upgrade_sock,
            ),
        ] {
            if !p.is_absolute() {
                return Err(ConfigError(format!(
                    "{key}: {} must be an absolute path",
                    p.display()
                )));
            }
        }
        let positive = [
            (
                "server.read_timeout (SERVER_READ_TIMEOUT)",
                self.server.read_timeout,
            ),
            (
                "server.write_timeout (SERVER_WRITE_TIMEOUT)",
                self.server.write_timeout,
            ),
            (
                "server.idle_timeout (SERVER_IDLE_TIMEOUT)",
                self.server.idle_timeout,
            ),
            (
                "server.grace_period (SERVER_GRACE_PERIOD)",
                self.server.grace_period,
            ),
            (
                "server.body_timeout (SERVER_BODY_TIMEOUT)",
                self.server.body_timeout,
            ),
            (
                "reasoning.vault_ttl (REASONING_VAULT_TTL)",
                self.reasoning.vault_ttl,
            ),
            ("responses.ttl (RESPONSES_TTL)", self.responses.ttl),
            (
                "client.connect_timeout (CLIENT_CONNECT_TIMEOUT)",
                self.client.connect_timeout,
            ),
            (
                "client.first_byte_timeout (CLIENT_TIMEOUT)",
                self.client.first_byte_timeout,
            ),
            (
                "client.stream_idle_timeout (CLIENT_STREAM_IDLE_TIMEOUT)",
                self.client.stream_idle_timeout,
            ),
            (
                "client.idle_conn_timeout (CLIENT_IDLE_CONN_TIMEOUT)",
                self.client.idle_conn_timeout,
            ),
            (
                "client.models_timeout (CLIENT_MODELS_TIMEOUT)",
                self.client.models_timeout,
            ),
            (
                "client.dns_refresh_interval (CLIENT_DNS_REFRESH_INTERVAL)",
                self.client.dns_refresh_interval,
            ),
        ];
        for (key, d) in positive {
            if d.get().is_zero() {
                return Err(ConfigError(format!(
                    "{key}: must be greater than 0 (a zero timeout would fail every request)"
                )));
            }
        }
        if let Some(l) = &self.log.level {
            if !matches!(
                l.to_ascii_lowercase().as_str(),
                "error" | "warn" | "info" | "debug" | "trace" | "off"
            ) {
                return Err(ConfigError(format!(
                    "log.level (LOG_LEVEL): {l:?} is not error, warn, info, debug, trace or off"
                )));
            }
        }
        if self.telemetry.enable && self.telemetry.metrics_port == self.server.port {
            return Err(ConfigError(
                "telemetry.metrics_port (TELEMETRY_METRICS_PORT) must differ from server.port"
                    .into(),
            ));
        }
        if let Some(ca) = &self.client.ca_file {
            if !ca.is_file() {
                return Err(ConfigError(format!(
                    "client.ca_file (CLIENT_CA_FILE): {} is not a file",
                    ca.display()
                )));
            }
        }
        for (name, p) in &self.providers {
            p.validate(name)?;
        }
        self.mcp.validate()?;
        self.a2a.validate()?;
        self.cache.validate()?;
        self.otel.validate()?;
        self.guardrails.validate()?;
        for k in &self.keys {
            if let Some(g) = &k.limits.guardrails {
                if !self.guardrails.profiles.contains_key(g) {
                    return Err(ConfigError(format!(
                        "keys.{}: guardrails = {g:?} names no [guardrails.profiles.{g}]",
                        k.name
                    )));
                }
            }
        }
        if let Some(r) = &self.retry {
            r.validate("retry")?;
        }
        self.auth.validate(&self.keys, self.control_plane())?;
        if let Some(url) = &self.store.database_url {
            if crate::store::Kind::of(url.expose()).is_none() {
                return Err(ConfigError(format!(
                    "store.database_url (DATABASE_URL): {} is not sqlite://path or postgres://...",
                    crate::store::redacted(url.expose())
                )));
            }
        }
        if self.admin.key().is_some_and(|k| k.len() < 16) {
            return Err(ConfigError(
                "admin.api_key (ADMIN_API_KEY): use at least 16 characters (inference-gateway hash-key makes a random one)".into(),
            ));
        }
        if let Some(u) = &self.server.public_url {
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && u.parse::<http::Uri>().is_ok_and(|x| x.host().is_some());
            if !ok {
                return Err(ConfigError(format!(
                    "server.public_url (SERVER_PUBLIC_URL): {u:?} is not an http(s) URL"
                )));
            }
        }
        if let Some(c) = &self.admin.oidc_claim {
            if self.auth.oidc_issuer.is_none() {
                return Err(ConfigError(
                    "admin.oidc_claim (ADMIN_OIDC_CLAIM): needs auth.oidc_issuer (AUTH_OIDC_ISSUER)"
                        .into(),
                ));
            }
            if !c
                .split_once('=')
                .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty())
            {
                return Err(ConfigError(format!(
                    "admin.oidc_claim (ADMIN_OIDC_CLAIM): {c:?} is not claim=value"
                )));
            }
        }
        if self.limits.redis_timeout.get().is_zero() {
            return Err(ConfigError(
                "limits.redis_timeout (REDIS_TIMEOUT): must be greater than 0".into(),
            ));
        }
        if let Some(u) = &self.limits.redis_url {
            // The message never repeats the URL (it may hold a password).
            if redis::Client::open(u.expose()).is_err() {
                return Err(ConfigError(
                    "limits.redis_url (REDIS_URL): not a valid redis:// URL".into(),
                ));
            }
        }
        for (m, p) in &self.prices {
            let ok = [Some(p.input), Some(p.output), p.cached_input]
                .into_iter()
                .flatten()
                .all(|v| v.is_finite() && v >= 0.0);
            if !ok || !m.contains('/') {
                return Err(ConfigError(format!(
                    "prices.{m:?}: provider/model with prices >= 0 (USD per million tokens)"
                )));
            }
        }
        if self.client.total_timeout.is_some_and(|t| t.get().is_zero()) {
            return Err(ConfigError(
                "client.total_timeout (CLIENT_TOTAL_TIMEOUT): must be greater than 0".into(),
            ));
        }
        if let Some(k) = &self.responses.encryption_key {
            crate::seal::SealKey::from_config(Some(k.expose()))?;
        }
        let dp = &self.doors.messages.default_provider;
        if !dp.is_empty() && !self.providers.contains_key(dp.as_str()) {
            return Err(ConfigError(format!(
                "doors.messages.default_provider (DOORS_MESSAGES_DEFAULT_PROVIDER): unknown provider {dp:?}"
            )));
        }
        for (alias, a) in &self.aliases {
            let Some((provider, model)) = a.target.split_once('/') else {
                return Err(ConfigError(format!(
                    "aliases.{alias}.target: {:?} must be provider/model",
                    a.target
                )));
            };
            if model.is_empty() || !self.providers.contains_key(provider) {
                return Err(ConfigError(format!(
                    "aliases.{alias}.target: unknown provider {provider:?} in {:?}",
                    a.target
                )));
            }
            if self.providers.contains_key(alias.as_str()) {
                return Err(ConfigError(format!(
                    "aliases.{alias}: an alias may not have a provider's name"
                )));
            }
            resilience::validate_alias_timeouts(alias, &a.timeouts)?;
            for f in &a.fallbacks {
                let known = f
                    .split_once('/')
                    .is_some_and(|(p, m)| !m.is_empty() && self.providers.contains_key(p));
                if !known {
                    return Err(ConfigError(format!(
                        "aliases.{alias}.fallbacks: {f:?} must be provider/model with a known provider"
                    )));
                }
            }
            for k in ["model", "messages", "stream"] {
                if a.defaults.contains_key(k) {
                    return Err(ConfigError(format!(
                        "aliases.{alias}.defaults.{k}: this field cannot have a default"
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> String {
        let host = if self.server.host == "localhost" {
            "127.0.0.1"
        } else {
            &self.server.host
        };
        if host.contains(':') {
            format!("[{host}]:{}", self.server.port)
        } else {
            format!("{host}:{}", self.server.port)
        }
    }
}

impl HumanDuration {
    pub fn get(&self) -> Duration {
        self.0
    }
}

#[cfg(test)]
mod tests;

/// Completes a TOML-only config the way [`Config::load`] does, without touching the environment.
#[cfg(test)]
pub fn providers_for_tests(cfg: &mut Config) {
    providers::merge_builtins(&mut cfg.providers).unwrap();
}
