//! Environment overrides, with the Go gateway's variable names (see docs/CONFIGURATION in README).

use std::path::PathBuf;
use std::str::FromStr;

use super::providers::{builtin_ids, env_prefix};
use super::{Config, ConfigError, Environment, HumanDuration, Secret};

type GetEnv<'a> = &'a dyn Fn(&str) -> Option<String>;

fn get(getenv: GetEnv, key: &str) -> Option<String> {
    getenv(key).filter(|v| !v.trim().is_empty())
}

fn parse<T: FromStr>(getenv: GetEnv, key: &str) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match get(getenv, key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| ConfigError(format!("{key}={v:?}: {e}"))),
    }
}

fn duration(getenv: GetEnv, key: &str) -> Result<Option<HumanDuration>, ConfigError> {
    match get(getenv, key) {
        None => Ok(None),
        Some(v) => HumanDuration::parse(&v)
            .map(Some)
            .map_err(|e| ConfigError(format!("{key}: {e}"))),
    }
}

/// A boolean from `<NAME>_ENABLE` or `<NAME>_ENABLED` (both spellings are in use).
pub fn flag(getenv: GetEnv, name: &str) -> Result<Option<bool>, ConfigError> {
    for key in [format!("{name}_ENABLE"), format!("{name}_ENABLED")] {
        if let Some(v) = get(getenv, &key) {
            return parse_bool(&v)
                .map(Some)
                .ok_or_else(|| ConfigError(format!("{key}={v:?}: expected true or false")));
        }
    }
    Ok(None)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn list(getenv: GetEnv, key: &str) -> Option<Vec<String>> {
    getenv(key).map(|v| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

macro_rules! set {
    ($target:expr, $value:expr) => {
        if let Some(v) = $value {
            $target = v;
        }
    };
}

pub(super) fn apply(cfg: &mut Config, getenv: GetEnv) -> Result<(), ConfigError> {
    if let Some(v) = get(getenv, "ENVIRONMENT") {
        cfg.environment = match v.to_ascii_lowercase().as_str() {
            "production" | "prod" => Environment::Production,
            "development" | "dev" => Environment::Development,
            _ => {
                return Err(ConfigError(format!(
                    "ENVIRONMENT={v:?}: expected production or development"
                )))
            }
        };
    }

    let s = &mut cfg.server;
    set!(s.host, get(getenv, "SERVER_HOST"));
    set!(s.port, parse(getenv, "SERVER_PORT")?);
    set!(s.read_timeout, duration(getenv, "SERVER_READ_TIMEOUT")?);
    set!(s.write_timeout, duration(getenv, "SERVER_WRITE_TIMEOUT")?);
    set!(s.idle_timeout, duration(getenv, "SERVER_IDLE_TIMEOUT")?);
    set!(
        s.max_request_body_size,
        parse(getenv, "SERVER_MAX_REQUEST_BODY_SIZE")?
    );
    set!(s.threads, parse(getenv, "SERVER_THREADS")?);
    set!(s.grace_period, duration(getenv, "SERVER_GRACE_PERIOD")?);
    set!(
        s.graceful_shutdown_timeout,
        duration(getenv, "SERVER_GRACEFUL_SHUTDOWN_TIMEOUT")?
    );
    set!(s.max_json_fields, parse(getenv, "SERVER_MAX_JSON_FIELDS")?);
    set!(s.body_timeout, duration(getenv, "SERVER_BODY_TIMEOUT")?);
    set!(s.max_connections, parse(getenv, "SERVER_MAX_CONNECTIONS")?);
    if let Some(v) = get(getenv, "SERVER_PUBLIC_URL") {
        s.public_url = Some(v.trim().trim_end_matches('/').to_string());
    }
    if let Some(v) = get(getenv, "SERVER_HEALTH_VERBOSE") {
        s.health_verbose = Some(match v.trim().to_ascii_lowercase().as_str() {
            "public" => super::HealthVerbose::Public,
            "auth" => super::HealthVerbose::Auth,
            "off" => super::HealthVerbose::Off,
            _ => {
                return Err(ConfigError(format!(
                    "SERVER_HEALTH_VERBOSE={v:?}: expected public, auth or off"
                )))
            }
        });
    }
    if let Some(p) = get(getenv, "SERVER_PID_FILE") {
        s.pid_file = PathBuf::from(p);
    }
    if let Some(p) = get(getenv, "SERVER_UPGRADE_SOCK") {
        s.upgrade_sock = PathBuf::from(p);
    }
    if let Some(p) = get(getenv, "SERVER_TLS_CERT_PATH") {
        s.tls_cert_path = Some(PathBuf::from(p));
    }
    if let Some(p) = get(getenv, "SERVER_TLS_KEY_PATH") {
        s.tls_key_path = Some(PathBuf::from(p));
    }

    let c = &mut cfg.client;
    set!(
        c.connect_timeout,
        duration(getenv, "CLIENT_CONNECT_TIMEOUT")?
    );
    // The Go gateway's CLIENT_TIMEOUT bounded the whole request, which cut long streams; here it
    // bounds the wait for the response headers only.
    set!(c.first_byte_timeout, duration(getenv, "CLIENT_TIMEOUT")?);
    set!(
        c.first_byte_timeout,
        duration(getenv, "CLIENT_RESPONSE_HEADER_TIMEOUT")?
    );
    set!(
        c.stream_idle_timeout,
        duration(getenv, "CLIENT_STREAM_IDLE_TIMEOUT")?
    );
    set!(c.max_idle_conns, parse(getenv, "CLIENT_MAX_IDLE_CONNS")?);
    set!(
        c.idle_conn_timeout,
        duration(getenv, "CLIENT_IDLE_CONN_TIMEOUT")?
    );
    set!(c.tls_min_version, get(getenv, "CLIENT_TLS_MIN_VERSION"));
    set!(c.models_timeout, duration(getenv, "CLIENT_MODELS_TIMEOUT")?);
    set!(
        c.dns_refresh_interval,
        duration(getenv, "CLIENT_DNS_REFRESH_INTERVAL")?
    );
    set!(
        c.max_response_body_size,
        parse(getenv, "CLIENT_MAX_RESPONSE_BODY_SIZE")?
    );
    set!(
        c.models_cache_ttl,
        duration(getenv, "CLIENT_MODELS_CACHE_TTL")?
    );
    if let Some(t) = duration(getenv, "CLIENT_TOTAL_TIMEOUT")? {
        c.total_timeout = Some(t);
    }
    if let Some(p) = get(getenv, "CLIENT_CA_FILE") {
        c.ca_file = Some(PathBuf::from(p));
    }

    if let Some(e) = flag(getenv, "TELEMETRY")? {
        cfg.telemetry.enable = e;
    }
    set!(
        cfg.telemetry.metrics_port,
        parse(getenv, "TELEMETRY_METRICS_PORT")?
    );
    if let Some(h) = get(getenv, "TELEMETRY_METRICS_HOST") {
        cfg.telemetry.metrics_host = Some(h);
    }
    if let Some(l) = get(getenv, "LOG_LEVEL") {
        cfg.log.level = Some(l.trim().to_string());
    }
    if let Some(f) = get(getenv, "LOG_FORMAT") {
        cfg.log.format = Some(match f.trim().to_ascii_lowercase().as_str() {
            "json" => super::LogFormat::Json,
            "text" => super::LogFormat::Text,
            _ => {
                return Err(ConfigError(format!(
                    "LOG_FORMAT={f:?}: expected json or text"
                )))
            }
        });
    }
    if let Some(f) = get(getenv, "LOG_FILE") {
        cfg.log.file = Some(PathBuf::from(f));
    }

    set!(cfg.models.allowed, list(getenv, "ALLOWED_MODELS"));
    set!(cfg.models.disallowed, list(getenv, "DISALLOWED_MODELS"));

    apply_mcp(&mut cfg.mcp, getenv)?;
    apply_a2a(&mut cfg.a2a, getenv)?;
    apply_cache(&mut cfg.cache, getenv)?;
    apply_otel(&mut cfg.otel, getenv)?;
    apply_guardrails(&mut cfg.guardrails, getenv)?;
    set!(cfg.auth.enable, flag(getenv, "AUTH")?);
    if let Some(v) = get(getenv, "AUTH_OIDC_ISSUER") {
        cfg.auth.oidc_issuer = Some(v.trim().to_string());
    }
    if let Some(v) = get(getenv, "AUTH_OIDC_CLIENT_ID") {
        cfg.auth.oidc_client_id = Some(v.trim().to_string());
    }
    if let Some(v) = get(getenv, "AUTH_OIDC_CLIENT_SECRET") {
        cfg.auth.oidc_client_secret = Some(Secret::new(v.trim()));
    }
    if let Some(v) = get(getenv, "REDIS_URL") {
        cfg.limits.redis_url = Some(Secret::new(v.trim()));
    }
    set!(cfg.limits.redis_timeout, duration(getenv, "REDIS_TIMEOUT")?);
    set!(
        cfg.limits.default_completion_reserve,
        parse(getenv, "LIMITS_DEFAULT_COMPLETION_RESERVE")?
    );
    set!(cfg.limits.max_n, parse(getenv, "LIMITS_MAX_N")?);
    set!(
        cfg.reasoning.vault_ttl,
        duration(getenv, "REASONING_VAULT_TTL")?
    );
    set!(
        cfg.reasoning.vault_max_bytes,
        parse(getenv, "REASONING_VAULT_MAX_BYTES")?
    );
    set!(
        cfg.responses.max_entries,
        parse(getenv, "RESPONSES_MAX_ENTRIES")?
    );
    set!(
        cfg.responses.max_bytes,
        parse(getenv, "RESPONSES_MAX_BYTES")?
    );
    set!(cfg.responses.ttl, duration(getenv, "RESPONSES_TTL")?);
    if let Some(v) = get(getenv, "DATABASE_URL") {
        cfg.store.database_url = Some(Secret::new(v.trim()));
    }
    set!(
        cfg.store.request_log_retention,
        duration(getenv, "STORE_REQUEST_LOG_RETENTION")?
    );
    set!(cfg.store.log_bodies, bool_var(getenv, "STORE_LOG_BODIES")?);
    if let Some(v) = get(getenv, "ADMIN_API_KEY") {
        cfg.admin.api_key = Some(Secret::new(v.trim()));
    }
    if let Some(v) = get(getenv, "ADMIN_OIDC_CLAIM") {
        cfg.admin.oidc_claim = Some(v.trim().to_string());
    }
    if let Some(v) = get(getenv, "ADMIN_API_KEY_FILE") {
        cfg.admin.api_key_file = Some(std::path::PathBuf::from(v.trim()));
    }
    if let Some(v) = get(getenv, "RESPONSES_ENCRYPTION_KEY") {
        cfg.responses.encryption_key = Some(Secret::new(v.trim()));
    }
    if let Some(v) = get(getenv, "DOORS_MESSAGES_DEFAULT_PROVIDER") {
        cfg.doors.messages.default_provider = v.trim().to_string();
    }
    if let Some(v) = get(getenv, "LIMITS_FAILURE_MODE") {
        cfg.limits.failure_mode = match v.trim() {
            "fail_open" => super::auth::FailureMode::FailOpen,
            "fail_closed" => super::auth::FailureMode::FailClosed,
            _ => {
                return Err(ConfigError(format!(
                    "LIMITS_FAILURE_MODE={v:?}: expected fail_open or fail_closed"
                )))
            }
        };
    }

    // Built-in providers and every provider named in the TOML can be set from the environment.
    let names: Vec<String> = builtin_ids()
        .map(str::to_string)
        .chain(cfg.providers.keys().cloned())
        .collect();
    for name in names {
        let prefix = env_prefix(&name);
        let url = get(getenv, &format!("{prefix}_API_URL"));
        let key = get(getenv, &format!("{prefix}_API_KEY"));
        let key_file = get(getenv, &format!("{prefix}_API_KEY_FILE"));
        let enabled = flag(getenv, &prefix)?;
        let dialect = get(getenv, &format!("{prefix}_DIALECT"));
        // A behaviour switch: it does not make a provider configured (reachable) by itself.
        if let Some(s) = bool_var(getenv, &format!("{prefix}_STREAM_USAGE"))? {
            cfg.providers.entry(name.clone()).or_default().stream_usage = Some(s);
        }
        if let Some(r) = get(getenv, &format!("{prefix}_RESPONSES_API")) {
            cfg.providers.entry(name.clone()).or_default().responses_api = Some(r.trim().into());
        }
        if url.is_none()
            && key.is_none()
            && key_file.is_none()
            && enabled.is_none()
            && dialect.is_none()
        {
            continue;
        }
        let p = cfg.providers.entry(name).or_default();
        p.configured = true;
        if let Some(u) = url {
            p.url = Some(u.trim().to_string());
        }
        if let Some(k) = key {
            p.api_key = Some(Secret::new(k.trim()));
        }
        if let Some(f) = key_file {
            p.api_key_file = Some(PathBuf::from(f));
            p.api_key = None;
        }
        if let Some(e) = enabled {
            p.enabled = Some(e);
        }
        if let Some(d) = dialect {
            p.dialect = Some(d.trim().to_string());
        }
    }
    Ok(())
}

/// `MCP_*`: the Go gateway's names. `MCP_SERVERS` adds URL servers after those of the TOML.
fn apply_mcp(m: &mut super::McpConfig, getenv: GetEnv) -> Result<(), ConfigError> {
    set!(m.enable, flag(getenv, "MCP")?);
    set!(m.expose, bool_var(getenv, "MCP_EXPOSE")?);
    set!(m.client_timeout, duration(getenv, "MCP_CLIENT_TIMEOUT")?);
    set!(m.request_timeout, duration(getenv, "MCP_REQUEST_TIMEOUT")?);
    set!(m.max_retries, parse(getenv, "MCP_MAX_RETRIES")?);
    set!(m.initial_backoff, duration(getenv, "MCP_INITIAL_BACKOFF")?);
    set!(m.retry_interval, duration(getenv, "MCP_RETRY_INTERVAL")?);
    set!(
        m.enable_reconnect,
        bool_var(getenv, "MCP_ENABLE_RECONNECT")?
    );
    set!(
        m.reconnect_interval,
        duration(getenv, "MCP_RECONNECT_INTERVAL")?
    );
    set!(m.polling_enable, flag(getenv, "MCP_POLLING")?);
    set!(
        m.polling_interval,
        duration(getenv, "MCP_POLLING_INTERVAL")?
    );
    set!(m.max_iterations, parse(getenv, "MCP_MAX_ITERATIONS")?);
    set!(m.include_tools, list(getenv, "MCP_INCLUDE_TOOLS"));
    set!(m.exclude_tools, list(getenv, "MCP_EXCLUDE_TOOLS"));
    if let Some(urls) = list(getenv, "MCP_SERVERS") {
        for u in urls {
            if !m
                .servers
                .iter()
                .any(|s| s.url.as_deref() == Some(u.as_str()))
            {
                m.servers.push(super::McpServerConfig::from_url(&u));
            }
        }
    }
    Ok(())
}

/// `A2A_*` (seed 001's names). `A2A_AGENTS` adds base URLs after the agents of the TOML.
fn apply_a2a(a: &mut super::a2a::A2aConfig, getenv: GetEnv) -> Result<(), ConfigError> {
    set!(a.enable, flag(getenv, "A2A")?);
    set!(a.expose, bool_var(getenv, "A2A_EXPOSE")?);
    set!(a.client_timeout, duration(getenv, "A2A_CLIENT_TIMEOUT")?);
    if let Some(urls) = list(getenv, "A2A_AGENTS") {
        for u in urls {
            let u = u.trim_end_matches('/').to_string();
            if !a.agents.iter().any(|x| x.url.trim_end_matches('/') == u) {
                a.agents.push(super::a2a::A2aAgentConfig::from_url(&u));
            }
        }
    }
    Ok(())
}

/// Patterns from the environment: a JSON array of strings, or one pattern when the value is
/// not JSON.
fn patterns(getenv: GetEnv, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(v) = get(getenv, key) else {
        return Ok(None);
    };
    if v.trim_start().starts_with('[') {
        if let Ok(list) = serde_json::from_str::<Vec<String>>(&v) {
            return Ok(Some(list));
        }
        if serde_json::from_str::<serde_json::Value>(&v).is_ok() {
            return Err(ConfigError(format!(
                "{key}: expected a JSON array of strings"
            )));
        }
    }
    Ok(Some(vec![v]))
}

/// `GUARDRAILS_*`: the top-level rules.
fn apply_guardrails(
    g: &mut super::guardrails::GuardrailsConfig,
    getenv: GetEnv,
) -> Result<(), ConfigError> {
    set!(
        g.deny_patterns,
        patterns(getenv, "GUARDRAILS_DENY_PATTERNS")?
    );
    set!(g.redact_pii, bool_var(getenv, "GUARDRAILS_REDACT_PII")?);
    set!(
        g.output_deny_patterns,
        patterns(getenv, "GUARDRAILS_OUTPUT_DENY_PATTERNS")?
    );
    set!(g.output_window, parse(getenv, "GUARDRAILS_OUTPUT_WINDOW")?);
    if let Some(v) = get(getenv, "GUARDRAILS_WEBHOOK_URL") {
        g.webhook_url = Some(v.trim().to_string());
    }
    set!(
        g.webhook_timeout,
        duration(getenv, "GUARDRAILS_WEBHOOK_TIMEOUT")?
    );
    if let Some(v) = get(getenv, "GUARDRAILS_WEBHOOK_FAILURE_MODE") {
        use super::guardrails::WebhookFailureMode;
        g.webhook_failure_mode = match v.trim().to_ascii_lowercase().as_str() {
            "fail_closed" => WebhookFailureMode::FailClosed,
            "fail_open" => WebhookFailureMode::FailOpen,
            _ => {
                return Err(ConfigError(format!(
                    "GUARDRAILS_WEBHOOK_FAILURE_MODE={v:?}: expected fail_closed or fail_open"
                )))
            }
        };
    }
    Ok(())
}

/// `CACHE_*`: the response cache.
fn apply_cache(c: &mut super::cache::CacheConfig, getenv: GetEnv) -> Result<(), ConfigError> {
    set!(c.enable, flag(getenv, "CACHE")?);
    set!(c.ttl, duration(getenv, "CACHE_TTL")?);
    set!(c.max_bytes, parse(getenv, "CACHE_MAX_BYTES")?);
    set!(c.max_entry_bytes, parse(getenv, "CACHE_MAX_ENTRY_BYTES")?);
    if let Some(v) = get(getenv, "CACHE_REDIS_URL") {
        c.redis_url = Some(Secret::new(v.trim()));
    }
    if let Some(v) = get(getenv, "CACHE_SCOPE") {
        use super::cache::CacheScope;
        c.scope = match v.trim().to_ascii_lowercase().as_str() {
            "auto" => CacheScope::Auto,
            "principal" => CacheScope::Principal,
            "shared" => CacheScope::Shared,
            _ => {
                return Err(ConfigError(format!(
                    "CACHE_SCOPE={v:?}: expected auto, principal or shared"
                )))
            }
        };
    }
    Ok(())
}

/// A duration in the specification's unit (a bare number is milliseconds) or a human one.
fn otel_duration(getenv: GetEnv, key: &str) -> Result<Option<HumanDuration>, ConfigError> {
    match get(getenv, key) {
        Some(v) if v.trim().bytes().all(|b| b.is_ascii_digit()) => Ok(Some(HumanDuration(
            std::time::Duration::from_millis(v.trim().parse().unwrap_or(0)),
        ))),
        _ => duration(getenv, key),
    }
}

/// `OTEL_*`: OpenTelemetry traces, with the specification's variable names.
fn apply_otel(c: &mut super::otel::OtelConfig, getenv: GetEnv) -> Result<(), ConfigError> {
    use super::otel::OtlpProtocol;
    let text = |key: &str| get(getenv, key).map(|v| v.trim().to_string());
    set!(
        c.exporter_otlp_endpoint,
        text("OTEL_EXPORTER_OTLP_ENDPOINT").map(Some)
    );
    set!(
        c.exporter_otlp_traces_endpoint,
        text("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").map(Some)
    );
    // The traces-specific variable wins over the general one, as in the specification.
    let protocol =
        text("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or(text("OTEL_EXPORTER_OTLP_PROTOCOL"));
    if let Some(p) = protocol {
        c.exporter_otlp_protocol = match p.as_str() {
            "http/protobuf" => OtlpProtocol::HttpProtobuf,
            "http/json" => OtlpProtocol::HttpJson,
            "grpc" => {
                return Err(ConfigError(
                    "OTEL_EXPORTER_OTLP_PROTOCOL=grpc: not supported; use http/protobuf (a collector's port 4318)".into(),
                ))
            }
            _ => {
                return Err(ConfigError(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={p:?}: expected http/protobuf or http/json"
                )))
            }
        };
    }
    let headers = text("OTEL_EXPORTER_OTLP_TRACES_HEADERS").or(text("OTEL_EXPORTER_OTLP_HEADERS"));
    if let Some(h) = headers {
        c.exporter_otlp_headers = Some(Secret::new(h));
    }
    let timeout = match otel_duration(getenv, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")? {
        Some(t) => Some(t),
        None => otel_duration(getenv, "OTEL_EXPORTER_OTLP_TIMEOUT")?,
    };
    set!(c.exporter_otlp_timeout, timeout);
    set!(c.service_name, text("OTEL_SERVICE_NAME").map(Some));
    set!(
        c.resource_attributes,
        text("OTEL_RESOURCE_ATTRIBUTES").map(Some)
    );
    if let Some(s) = text("OTEL_TRACES_SAMPLER") {
        c.traces_sampler = s.to_ascii_lowercase();
    }
    set!(
        c.traces_sampler_arg,
        parse(getenv, "OTEL_TRACES_SAMPLER_ARG")?.map(Some)
    );
    set!(
        c.instrumentation_genai_capture_message_content,
        bool_var(getenv, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")?
    );
    set!(
        c.bsp_schedule_delay,
        otel_duration(getenv, "OTEL_BSP_SCHEDULE_DELAY")?
    );
    set!(
        c.bsp_max_queue_size,
        parse(getenv, "OTEL_BSP_MAX_QUEUE_SIZE")?
    );
    set!(
        c.bsp_max_export_batch_size,
        parse(getenv, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?
    );
    set!(c.sdk_disabled, bool_var(getenv, "OTEL_SDK_DISABLED")?);
    Ok(())
}

/// A plain boolean variable (`MCP_EXPOSE=true`, `MCP_ENABLE_RECONNECT=false`).
fn bool_var(getenv: GetEnv, key: &str) -> Result<Option<bool>, ConfigError> {
    match get(getenv, key) {
        None => Ok(None),
        Some(v) => parse_bool(&v)
            .map(Some)
            .ok_or_else(|| ConfigError(format!("{key}={v:?}: expected true or false"))),
    }
}
