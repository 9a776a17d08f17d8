//! One structured line per request, built from the same per-request record as the metrics.
//! Never holds a secret: no header values, and request bodies only in development (truncated).

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::{Config, LogFormat};

#[derive(Serialize)]
pub struct AccessRecord<'a> {
    pub time: String,
    pub level: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
    pub upstream_model: Option<&'a str>,
    pub upstream: Option<String>,
    /// Caller identity (key name / subject) once authentication is configured; never a secret.
    pub key_id: Option<&'a str>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub usage_estimated: bool,
    pub ttft_ms: Option<f64>,
    pub duration_ms: f64,
    pub upstream_ms: f64,
    /// Time waiting for MCP tool calls (tool loop only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_ms: Option<f64>,
    /// Model calls made by the MCP tool loop (tool loop only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_rounds: Option<u32>,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub error: Option<&'a str>,
    pub client_disconnected: bool,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub tool_calls: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body: Option<&'a str>,
}

impl AccessRecord<'_> {
    pub fn now() -> String {
        humantime::format_rfc3339_millis(SystemTime::now()).to_string()
    }

    pub fn render(&self, format: LogFormat) -> String {
        match format {
            LogFormat::Json => serde_json::to_string(self).expect("record serializes"),
            LogFormat::Text => {
                let mut s = String::with_capacity(256);
                let opt = |v: Option<&str>| v.unwrap_or("-").to_string();
                let _ = write!(
                    s,
                    "request_id={} method={} path={} status={} provider={} model={} upstream={} prompt_tokens={} completion_tokens={}{} duration_ms={:.1} upstream_ms={:.1} bytes_in={} bytes_out={} error={}",
                    self.request_id,
                    self.method,
                    self.path,
                    self.status,
                    opt(self.provider),
                    opt(self.model),
                    self.upstream.as_deref().unwrap_or("-"),
                    self.prompt_tokens.map_or("-".into(), |t| t.to_string()),
                    self.completion_tokens.map_or("-".into(), |t| t.to_string()),
                    if self.usage_estimated { " usage_estimated=true" } else { "" },
                    self.duration_ms,
                    self.upstream_ms,
                    self.bytes_in,
                    self.bytes_out,
                    opt(self.error),
                );
                if let Some(t) = self.ttft_ms {
                    let _ = write!(s, " ttft_ms={t:.1}");
                }
                if let Some(k) = self.key_id {
                    // OIDC subjects are caller-chosen: no spaces or line breaks in a text line.
                    let k: String = k
                        .chars()
                        .map(|c| {
                            if c.is_whitespace() || c.is_control() {
                                '_'
                            } else {
                                c
                            }
                        })
                        .collect();
                    let _ = write!(s, " key={k}");
                }
                if let Some(t) = self.tool_ms {
                    let _ = write!(s, " tool_ms={t:.1}");
                }
                if let Some(r) = self.mcp_rounds {
                    let _ = write!(s, " mcp_rounds={r}");
                }
                if self.client_disconnected {
                    s.push_str(" client_disconnected=true");
                }
                if !self.tool_calls.is_empty() {
                    let _ = write!(s, " tool_calls={}", self.tool_calls.join(","));
                }
                s
            }
        }
    }
}

/// Sets up the `log` backend: level, format (JSON lines or text) and destination.
pub fn init_logging(cfg: &Config) -> Result<(), String> {
    let format = cfg.log_format();
    let mut b = env_logger::Builder::new();
    b.parse_filters(cfg.log_level());
    if let Ok(filters) = std::env::var("RUST_LOG") {
        b.parse_filters(&filters);
    }
    match format {
        LogFormat::Json => {
            b.format(|buf, record| {
                if record.target() == "access" {
                    // Already a JSON object.
                    return writeln!(buf, "{}", record.args());
                }
                #[derive(Serialize)]
                struct Line<'a> {
                    time: String,
                    level: &'a str,
                    target: &'a str,
                    message: String,
                }
                let line = Line {
                    time: AccessRecord::now(),
                    level: record.level().as_str(),
                    target: record.target(),
                    message: record.args().to_string(),
                };
                writeln!(
                    buf,
                    "{}",
                    serde_json::to_string(&line).expect("line serializes")
                )
            });
        }
        LogFormat::Text => {
            b.format(|buf, record| {
                writeln!(
                    buf,
                    "[{} {} {}] {}",
                    AccessRecord::now(),
                    record.level(),
                    record.target(),
                    record.args()
                )
            });
        }
    }
    if let Some(path) = &cfg.log.file {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("log.file (LOG_FILE): cannot open {}: {e}", path.display()))?;
        b.target(env_logger::Target::Pipe(Box::new(f)));
    }
    b.try_init().map_err(|e| e.to_string())
}
