//! One structured line per request, built from the same per-request record as the metrics.
//! Never holds a secret: no header values, and request bodies only in development (truncated).

use std::borrow::Cow;
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
                fn opt(v: Option<&str>) -> Cow<'_, str> {
                    v.map_or(Cow::Borrowed("-"), text_field)
                }
                let _ = write!(
                    s,
                    "request_id={} method={} path={} status={} provider={} model={} upstream={} prompt_tokens={} completion_tokens={}{} duration_ms={:.1} upstream_ms={:.1} bytes_in={} bytes_out={} error={}",
                    text_field(self.request_id),
                    text_field(self.method),
                    text_field(self.path),
                    self.status,
                    opt(self.provider),
                    opt(self.model),
                    opt(self.upstream.as_deref()),
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
                    let _ = write!(s, " key={}", text_field(k));
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
                    s.push_str(" tool_calls=");
                    for (i, t) in self.tool_calls.iter().enumerate() {
                        if i > 0 {
                            s.push(',');
                        }
                        s.push_str(&text_field(t));
                    }
                }
                s
            }
        }
    }
}

/// A value for a `key=value` text line. Model names, tool names and OIDC subjects come from
/// callers and models: whitespace becomes `_` and other control characters are escaped
/// (`\u{1b}`), so a value can neither start a forged line nor a forged field.
fn text_field(v: &str) -> Cow<'_, str> {
    if !v
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        if c == ' ' || c == '\t' {
            out.push('_');
        } else if c == '\\' {
            out.push_str("\\\\");
        } else if c.is_whitespace() || c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
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
            // Lines are JSON, whose strings have every control character escaped: nothing for
            // env_logger's writer to strip, and its ANSI scan of each line (when the output is
            // not a terminal) was ~10,000 instructions per access line (issue 22).
            b.write_style(env_logger::WriteStyle::Always);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields_cannot_forge_lines_or_fields() {
        assert_eq!(text_field("gpt-4o"), "gpt-4o");
        assert_eq!(
            text_field("x\n[INFO access] key=admin\u{1b}[2J"),
            "x\\u{a}[INFO_access]_key=admin\\u{1b}[2J"
        );
        assert_eq!(text_field("a\\u{a}"), "a\\\\u{a}");
    }
}
