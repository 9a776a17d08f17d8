//! HTTP to the gateway: JSON calls with the API key or the admin key, streamed chat, and the
//! mapping of every failure to igw's exit codes.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

/// Why a command failed, and so its exit code.
#[derive(Debug)]
pub enum Failure {
    /// The gateway answered with an error (exit 1): status and its message.
    Gateway { status: u16, message: String },
    /// Bad usage found after parsing (exit 2).
    Usage(String),
    /// Unreachable, timed out, or a stream broken mid-answer (exit 3).
    Transport(String),
    /// Anything else that went wrong here (exit 1).
    Other(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Gateway { .. } | Failure::Other(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Transport(_) => 3,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Gateway { status, message } => {
                write!(f, "the gateway answered {status}: {message}")
            }
            Failure::Usage(m) | Failure::Transport(m) | Failure::Other(m) => f.write_str(m),
        }
    }
}

/// A transport error (the URL is named, never a key: reqwest's errors carry no headers).
pub fn transport(e: &reqwest::Error, base: &str) -> Failure {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "is unreachable"
    } else if e.is_body() || e.is_decode() {
        "broke off the answer"
    } else {
        "failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        Failure::Transport(format!("the gateway at {base} {what}"))
    } else {
        Failure::Transport(format!("the gateway at {base} {what} ({detail})"))
    }
}

/// Which credential a call carries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `IGW_API_KEY` as `Authorization: Bearer`, when set.
    Api,
    /// `IGW_ADMIN_KEY` as `X-Admin-Key` (required).
    Admin,
}

pub struct Gateway {
    pub base: String,
    pub http: reqwest::Client,
    pub api_key: Option<String>,
    pub admin_key: Option<String>,
}

fn env_secret(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl Gateway {
    pub fn new(url: &str, timeout: Duration) -> Result<Gateway, Failure> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::Usage(format!(
                "--url / IGW_URL must start with http:// or https:// (got {base:?})"
            )));
        }
        Ok(Gateway {
            http: Gateway::client(timeout, 8)?,
            base,
            api_key: env_secret("IGW_API_KEY"),
            admin_key: env_secret("IGW_ADMIN_KEY"),
        })
    }

    /// A client that keeps `idle` connections per host; `timeout` bounds each read (a stream
    /// may last longer as long as it keeps sending).
    pub fn client(timeout: Duration, idle: usize) -> Result<reqwest::Client, Failure> {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10).min(timeout))
            .read_timeout(timeout)
            .pool_max_idle_per_host(idle)
            .tcp_nodelay(true)
            .user_agent(concat!("igw/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::Other(format!("cannot build an HTTP client: {e}")))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Auth,
    ) -> Result<reqwest::RequestBuilder, Failure> {
        let mut req = self.http.request(method, self.url(path));
        match auth {
            Auth::Api => {
                if let Some(k) = &self.api_key {
                    req = req.bearer_auth(k);
                }
            }
            Auth::Admin => {
                let Some(k) = &self.admin_key else {
                    return Err(Failure::Usage(
                        "this command needs the admin key: set IGW_ADMIN_KEY".into(),
                    ));
                };
                req = req.header("x-admin-key", k);
            }
        }
        Ok(req)
    }

    /// Sends a request and answers its JSON body; an error status is a `Failure::Gateway`.
    pub async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Auth,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let mut req = self.request(method, path, auth)?;
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| transport(&e, &self.base))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| transport(&e, &self.base))?;
        if status >= 400 {
            return Err(gateway_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            Failure::Other(format!(
                "the gateway's answer to {path} is not JSON ({e}): is {} an inference gateway?",
                self.base
            ))
        })
    }

    pub async fn get(&self, path: &str, auth: Auth) -> Result<Value, Failure> {
        self.json(reqwest::Method::GET, path, auth, None).await
    }

    /// The model to use: the one given, else the first `/v1/models` lists.
    pub async fn model_or_first(&self, given: Option<String>) -> Result<String, Failure> {
        if let Some(m) = given.filter(|m| !m.is_empty()) {
            return Ok(m);
        }
        let list = self.get("/v1/models", Auth::Api).await?;
        list["data"][0]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                Failure::Other("the gateway lists no model; name one with -m or IGW_MODEL".into())
            })
    }
}

/// The gateway's error envelope (OpenAI's, or Anthropic's) as a failure.
pub fn gateway_error(status: u16, body: &[u8]) -> Failure {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v["error"]["message"]
        .as_str()
        .map(str::to_string)
        .or_else(|| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "(no message)".to_string()
            } else {
                text.chars().take(300).collect()
            }
        });
    Failure::Gateway { status, message }
}
